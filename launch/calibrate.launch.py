"""Launch calibration_node: record a calibration buffer from live topics, then exit.

    ros2 launch quantvla_ros calibrate.launch.py buffer_path:=/data/calib samples:=128

The launch ends when the node has recorded ``samples`` observations (or on Ctrl-C, which
keeps every observation recorded so far; launching again resumes the same buffer).
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _node(context):
    params = [LaunchConfiguration("params_file").perform(context)]
    overrides = {}
    buffer_path = LaunchConfiguration("buffer_path").perform(context)
    if buffer_path:
        overrides["buffer_path"] = buffer_path
    samples = LaunchConfiguration("samples").perform(context)
    if samples:
        overrides["samples"] = int(samples)
    if overrides:
        params.append(overrides)
    node = Node(
        package="quantvla_ros",
        executable="calibration_node",
        name="calibration_node",
        output="screen",
        parameters=params,
    )
    # The node exits once the buffer is full: end the whole launch with it.
    stop = RegisterEventHandler(OnProcessExit(target_action=node,
                                              on_exit=[EmitEvent(event=Shutdown())]))
    return [node, stop]


def generate_launch_description():
    """Declare the arguments and start the node."""
    default_params = PathJoinSubstitution(
        [FindPackageShare("quantvla_ros"), "config", "calibrate.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="calibration_node parameters (YAML)"),
        DeclareLaunchArgument("buffer_path", default_value="",
                              description="override the buffer_path parameter"),
        DeclareLaunchArgument("samples", default_value="",
                              description="override the samples parameter"),
        OpaqueFunction(function=_node),
    ])
