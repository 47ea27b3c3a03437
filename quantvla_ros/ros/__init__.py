"""ROS 2 layer of quantvla_ros: the two nodes and their ROS helpers.

Nodes: ``inference_node`` (the lifecycle ``quantvla_node``) and ``calibration_node``. Helpers:
``inputs`` (subscriptions and pairing into Observations), ``convert`` (messages <-> numpy),
``settings`` / ``params`` (the parameter tables), ``diagnostics``, ``worker``, ``noise``,
``pairing`` and ``bag_recorder`` (rosbag2 -> recorded buffer). Only this subpackage and
``demo`` import rclpy, message packages or rosbags; ``convert``, ``pairing``, ``settings``,
``noise`` and ``worker`` work on rclpy and rosbags messages alike (same field names).
"""
