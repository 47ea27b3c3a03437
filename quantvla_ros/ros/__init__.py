"""ROS 2 layer of quantvla_ros: the only subpackage that imports rclpy, messages or rosbags.

Nodes: ``inference_node`` (the lifecycle ``quantvla_node``) and ``calibration_node``. Offline:
``bag_reader`` (rosbag2 -> calibration buffer), ``synthetic_bag`` and ``demo``. The helpers
``convert``, ``pairing``, ``settings``, ``noise`` and ``worker`` are plain Python and work on
rclpy messages and rosbags messages alike (both expose the same field names).
"""
