"""Declare and read ROS parameters from the :mod:`settings` table."""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from quantvla_ros.ros.settings import Param

_TYPES = {
    "str": Parameter.Type.STRING,
    "str[]": Parameter.Type.STRING_ARRAY,
    "float": Parameter.Type.DOUBLE,
    "int": Parameter.Type.INTEGER,
    "bool": Parameter.Type.BOOL,
}


def declare(node, params: tuple[Param, ...]) -> None:
    """Declare every parameter with its description; required ones start unset."""
    for p in params:
        descriptor = ParameterDescriptor(description=p.description)
        if p.kind == "float":
            # An integer given for a double (`-p control_rate_hz:=10`) is accepted.
            descriptor.dynamic_typing = True
        # An empty list has no element type for rclpy: declare it by type (unset), so
        # parsing fills the table's default.
        empty_list = p.kind == "str[]" and p.default == []
        default = _TYPES[p.kind] if p.default is None or empty_list else p.default
        node.declare_parameter(p.name, default, descriptor)


def read(node, params: tuple[Param, ...]) -> dict:
    """Return {name: value} of the parameters that are set (unset required ones are left out)."""
    values = {}
    for p in params:
        try:
            value = node.get_parameter(p.name).value
        except ParameterUninitializedException:
            continue
        if value is not None:
            values[p.name] = list(value) if p.kind == "str[]" else value
    return values
