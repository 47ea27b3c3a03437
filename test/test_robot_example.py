"""config/robot_example.yaml, a typical arm's parameters for both nodes, checked two ways.

Without ROS: the sections that apply to each node (the same wildcard rules as rcl) hold
exactly the node's parameters and pass the validation the nodes run (``parse_inference``,
``parse_calibration``). With rclpy: the nodes themselves read the file through
``--ros-args --params-file`` in a namespace, as ``ros2 launch ... namespace:=arm`` starts
them, and quantvla_node configures on it (only the policy and device overridden).
``ros2 launch`` itself is not installable here (test_ros_launch.py skips that part).
"""

from pathlib import Path

import pytest
import yaml

from quantvla_ros.ros.settings import (
    CALIBRATION_PARAMS,
    INFERENCE_PARAMS,
    parse_calibration,
    parse_inference,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "robot_example.yaml"
NAMESPACE = "arm"


def section_matches(key: str, fqn: str) -> bool:
    """rcl's node-name match: exact, or with `/**` (any levels) and `*` (one level)."""
    pattern, name = key.strip("/").split("/"), fqn.strip("/").split("/")

    def match(p, n):
        if not p:
            return not n
        if p[0] == "**":
            return any(match(p[1:], n[i:]) for i in range(len(n) + 1))
        return bool(n) and (p[0] in ("*", n[0])) and match(p[1:], n[1:])

    return match(pattern, name)


def node_values(fqn: str, path: Path = EXAMPLE) -> dict:
    """Merge the ros__parameters of every section that applies to node ``fqn``, in file order."""
    values = {}
    for key, section in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        if section_matches(key, fqn):
            values.update(section["ros__parameters"])
    return values


def test_section_matching_follows_rcl_wildcards():
    assert section_matches("/**", "/arm/quantvla_node")
    assert section_matches("/**/quantvla_node", "/quantvla_node")
    assert section_matches("/**/quantvla_node", "/arm/left/quantvla_node")
    assert not section_matches("/**/quantvla_node", "/arm/calibration_node")
    assert section_matches("/*/quantvla_node", "/arm/quantvla_node")
    assert not section_matches("/*/quantvla_node", "/quantvla_node")


@pytest.mark.parametrize("node, table, parse", [
    ("quantvla_node", INFERENCE_PARAMS, parse_inference),
    ("calibration_node", CALIBRATION_PARAMS, parse_calibration),
])
@pytest.mark.parametrize("namespace", ["", NAMESPACE])
def test_example_sets_every_parameter_and_validates(node, table, parse, namespace):
    values = node_values(f"/{namespace}/{node}" if namespace else f"/{node}")
    assert set(values) == {p.name for p in table}, "typo or missing parameter"
    settings = parse(values)
    cameras = settings.inputs.cameras
    assert [c.compressed for c in cameras] == [False, True]
    assert settings.inputs.slots == ("base_0_rgb", "left_wrist_0_rgb")
    assert len(settings.inputs.joint_names) == 7


@pytest.fixture(scope="module")
def context():
    rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
    from quantvla_ros.demo.node_process import pick_domain_id

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=pick_domain_id(salt=79))
    yield ctx
    rclpy.shutdown(context=ctx)


def _ros_args():
    return ["--ros-args", "--params-file", str(EXAMPLE)]


def test_nodes_read_the_example_through_rcl(context):
    """rcl's YAML parser gives each node the values read above, in a namespace too."""
    from rclpy.node import Node

    from quantvla_ros.ros import params

    for node_name, table, parse in (("quantvla_node", INFERENCE_PARAMS, parse_inference),
                                    ("calibration_node", CALIBRATION_PARAMS, parse_calibration)):
        node = Node(node_name, namespace=NAMESPACE, context=context, cli_args=_ros_args())
        try:
            params.declare(node, table)
            assert parse(params.read(node, table)) == parse(
                node_values(f"/{NAMESPACE}/{node_name}"))
        finally:
            node.destroy_node()


def test_quantvla_node_configures_on_the_example(context, micro_checkpoint):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from quantvla_ros.ros.inference_node import QuantVLANode

    overrides = {"policy": str(micro_checkpoint), "device": "cpu", "precision": "fp32",
                 "warmup_runs": 1}
    node = QuantVLANode(namespace=NAMESPACE, context=context, cli_args=_ros_args(),
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
        expected = parse_inference({**node_values(f"/{NAMESPACE}/quantvla_node"), **overrides})
        assert node.settings == expected
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()


def test_calibration_node_starts_on_the_example(context, tmp_path):
    from rclpy.parameter import Parameter

    from quantvla_ros.ros.calibration_node import CalibrationNode

    buffer = tmp_path / "calibration"
    node = CalibrationNode(namespace=NAMESPACE, context=context, cli_args=_ros_args(),
                           parameter_overrides=[Parameter("buffer_path", value=str(buffer))])
    try:
        values = {**node_values(f"/{NAMESPACE}/calibration_node"), "buffer_path": str(buffer)}
        assert node.settings == parse_calibration(values)
        assert node.recorded == 0 and not node.done
    finally:
        node.close()
        node.destroy_node()
