"""The shipped demo (`make demo`, `quantvla demo`): the whole chain on synthetic data.

A synthetic rosbag is recorded into a buffer, quantized into an artifact, served by
``quantvla_node`` in a child process (``python -m quantvla_ros.ros.inference_node``) driven
through its lifecycle services, and the bag is played into it. Not used by the nodes.
"""
