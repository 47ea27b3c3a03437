"""Only quantvla_ros/ros/ may import ROS: everything else must run and test without it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "quantvla_ros"
ROS_DIR = PACKAGE / "ros"

ROS_MODULES = {
    "rclpy", "rosbags", "launch", "launch_ros", "launch_testing", "launch_testing_ros",
    "ament_index_python", "rosidl_runtime_py", "builtin_interfaces", "cv_bridge",
}


def _is_ros_module(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_MODULES or top.endswith(("_msgs", "_srvs", "_interfaces"))


def _imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def test_ros_imports_only_in_ros_subpackage():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ROS_DIR in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for lineno, module in _imported_modules(tree):
            if _is_ros_module(module):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: imports {module}")
    assert not offenders, (
        "ROS imports outside quantvla_ros/ros/ (move them into ros/):\n" + "\n".join(offenders)
    )
