"""Launch quantvla_node (a lifecycle node), optionally configuring and activating it.

    ros2 launch quantvla_ros quantvla.launch.py params_file:=/path/to/quantvla.yaml
    ros2 launch quantvla_ros quantvla.launch.py policy:=/path/to/artifact autostart:=false

With autostart (the default) the launch emits the configure transition, then activate once
the node reaches 'inactive'. A failed configure leaves the node unconfigured (see its log).
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


def _node_and_transitions(context):
    params = [LaunchConfiguration("params_file").perform(context)]
    policy = LaunchConfiguration("policy").perform(context)
    if policy:
        params.append({"policy": policy})
    node = LifecycleNode(
        package="quantvla_ros",
        executable="quantvla_node",
        name="quantvla_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=params,
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node),
                          transition_id=Transition.TRANSITION_CONFIGURE),
        condition=autostart,
    )
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node),
                transition_id=Transition.TRANSITION_ACTIVATE))],
        ),
        condition=autostart,
    )
    return [node, activate_when_configured, configure]


def generate_launch_description():
    """Declare the arguments and start the node."""
    default_params = PathJoinSubstitution(
        [FindPackageShare("quantvla_ros"), "config", "quantvla.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="quantvla_node parameters (YAML)"),
        DeclareLaunchArgument("policy", default_value="",
                              description="override the policy parameter (folder or model)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the node at launch"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        OpaqueFunction(function=_node_and_transitions),
    ])
