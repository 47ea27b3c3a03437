"""package.xml must parse with catkin_pkg, or colcon silently builds a plain Python package."""

import re
from pathlib import Path

import pytest

catkin_pkg_package = pytest.importorskip("catkin_pkg.package")

ROOT = Path(__file__).resolve().parents[1]

EXEC_DEPENDS = {
    "rclpy", "sensor_msgs", "std_msgs", "trajectory_msgs", "lifecycle_msgs", "diagnostic_msgs",
}


@pytest.fixture(scope="module")
def package():
    pkg = catkin_pkg_package.parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    return pkg


def test_name_and_build_type(package):
    assert package.name == "quantvla_ros"
    assert package.package_format == 3
    assert package.get_build_type() == "ament_python"


def test_exec_depends(package):
    names = {dep.name for dep in package.exec_depends}
    missing = EXEC_DEPENDS - names
    assert not missing, f"package.xml lacks exec_depend: {sorted(missing)}"


def test_maintainer_email(package):
    assert package.maintainers, "package.xml names no maintainer"
    for maintainer in package.maintainers:
        assert maintainer.email and re.fullmatch(
            r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", maintainer.email
        ), f"invalid maintainer email: {maintainer.email!r}"


def test_version_matches_setup_py(package):
    setup_py = (ROOT / "setup.py").read_text()
    assert re.search(rf"version=[\"']{re.escape(package.version)}[\"']", setup_py)
