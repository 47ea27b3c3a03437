"""Launch LIBERO as a ROS 2 robot (libero_bridge) and quantvla_node driving it, for one task.

    ros2 launch quantvla_ros libero_bridge.launch.py policy:=/path/to/checkpoint task:=3 \
         inits:=0-4 pace:=realtime

Needs `make libero` (the simulator's own venv). The node is configured and activated by this
launch (autostart); the bridge waits until it is active, runs the episodes of `inits` on
`task` and logs one JSON report per episode. Both read config/libero_bridge.yaml.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


def _bridge_and_node(context):
    params_file = LaunchConfiguration("params_file").perform(context)
    node_params = [params_file]
    policy = LaunchConfiguration("policy").perform(context)
    if policy:
        node_params.append({"policy": policy})
    node = LifecycleNode(
        package="quantvla_ros", executable="quantvla_node", name="quantvla_node",
        namespace="", output="screen", parameters=node_params)
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=Transition.TRANSITION_CONFIGURE))
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_ACTIVATE))]))
    bridge = Node(
        package="quantvla_ros", executable="libero_bridge", name="libero_bridge",
        output="screen",
        parameters=[params_file, {
            "task": int(LaunchConfiguration("task").perform(context)),
            "inits": LaunchConfiguration("inits").perform(context),
            "pace": LaunchConfiguration("pace").perform(context),
            "autostarted": True}])
    return [node, activate_when_configured, configure, bridge]


def generate_launch_description():
    """Declare the arguments and start the bridge and the node."""
    default_params = PathJoinSubstitution(
        [FindPackageShare("quantvla_ros"), "config", "libero_bridge.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="libero_bridge and quantvla_node parameters (YAML)"),
        DeclareLaunchArgument("policy", default_value="",
                              description="override the node's policy (folder or model)"),
        DeclareLaunchArgument("task", default_value="0", description="LIBERO task index"),
        DeclareLaunchArgument("inits", default_value="0",
                              description="fixed init states: 0,3,7 or 0-4"),
        DeclareLaunchArgument("pace", default_value="lockstep",
                              description="lockstep or realtime"),
        OpaqueFunction(function=_bridge_and_node),
    ])
