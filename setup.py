"""Packaging for quantvla_ros (ament_python)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "quantvla_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", sorted(glob("launch/*.py"))),
        ("share/" + package_name + "/config", sorted(glob("config/*.yaml"))),
    ],
    python_requires=">=3.10",
    # torch (and triton) are deliberately absent: a bare torch requirement makes pip pull a
    # multi-GB CUDA build over the CPU one. Install torch first (see `make setup`).
    install_requires=["numpy", "pyyaml", "safetensors"],
    zip_safe=True,
    maintainer="QuantVLA ROS maintainers",
    maintainer_email="maintainers@quantvla-ros.dev",
    description="QuantVLA: integer-quantized vision-language-action policies for ROS 2.",
    license="Apache-2.0",
    # setuptools >= 72 ignores (and warns about) tests_require; colcon reads this extra.
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "quantvla = quantvla_ros.cli.main:main",
            "quantvla_node = quantvla_ros.ros.inference_node:main",
            "calibration_node = quantvla_ros.ros.calibration_node:main",
            "libero_bridge = quantvla_ros.ros.libero_bridge:main",
        ],
    },
)
