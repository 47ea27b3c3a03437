"""``calibration_node``: record live observations into a calibration buffer.

Subscribes to the same inputs as quantvla_node and pairs them the same way (anchor frame,
nearest joint state and other cameras within sync_tolerance_s, current instruction). At most
``record_rate_hz`` observations per second are appended to the buffer at ``buffer_path`` until
it holds ``samples``; shards are written atomically, so an interrupted recording keeps what
was flushed, and starting again on the same path resumes (appends) until ``samples`` is
reached. Then the node flushes, optionally runs the quantization hook, and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from quantvla_ros.data.buffer import BufferFormatError, RecordedBuffer
from quantvla_ros.ros import diagnostics as diag
from quantvla_ros.ros import params
from quantvla_ros.ros.inputs import InputHub
from quantvla_ros.ros.settings import (
    CALIBRATION_PARAMS,
    CalibrationSettings,
    SettingsError,
    parse_calibration,
)
from quantvla_ros.workflows.quantize import quantize_hook

NODE_NAME = "calibration_node"
LOG_THROTTLE_S = 2.0

# quantize_fn(buffer_path, out_dir) -> artifact path; by default built from the quantize_*
# parameters (offline.quantize.quantize_hook), injectable for tests.
QuantizeFn = Callable[[Path, Path], Path]


class CalibrationNode(Node):
    """Records ``samples`` observations, then sets ``done`` (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, *, quantize_fn: QuantizeFn | None = None,
                 **kwargs) -> None:
        """Validate parameters, open or prepare the buffer, subscribe, start the timer.

        Raises SettingsError or BufferFormatError for bad parameters or an unusable
        existing buffer.
        """
        super().__init__(node_name, **kwargs)
        params.declare(self, CALIBRATION_PARAMS)
        self.settings: CalibrationSettings = parse_calibration(
            params.read(self, CALIBRATION_PARAMS))
        s = self.settings
        if quantize_fn is None and s.quantize:
            if not s.quantize_out:
                raise SettingsError("quantize is true but quantize_out is empty")
            quantize_fn = quantize_hook(s.quantize_source, s.quantize_bits, s.quantize_preset,
                                        s.seed, s.quantize_device, log=self.get_logger().info,
                                        options=s.quantize_options)
        self.quantize_fn = quantize_fn
        self.done = False
        self.exit_code = 0
        self.artifact: Path | None = None
        self.problems = diag.ProblemBoard()
        self._loggers = {}
        s = self.settings
        self.buffer: RecordedBuffer | None = None
        path = Path(s.buffer_path)
        if (path / "index.json").exists():
            self.buffer = RecordedBuffer.open(path)
            if set(self.buffer.cameras) != set(s.inputs.slots):
                raise BufferFormatError(
                    f"{path} holds cameras {sorted(self.buffer.cameras)}, this node records "
                    f"{sorted(s.inputs.slots)}")
            if self.buffer.state_dim != len(s.inputs.joint_names):
                raise BufferFormatError(
                    f"{path} holds {self.buffer.state_dim}-dim states, this node records "
                    f"{len(s.inputs.joint_names)} joints")
            self.get_logger().info(f"resuming {path}: {len(self.buffer)} of {s.samples} recorded")
        self._start = len(self.buffer) if self.buffer is not None else 0
        self._next_log = 0
        self.inputs = InputHub(self, s.inputs, self.report)
        self._timer = self.create_timer(1.0 / s.record_rate_hz, self._guarded_tick)
        if self._start >= s.samples:
            self._finish()

    @property
    def recorded(self) -> int:
        """Observations in the buffer, including earlier sessions."""
        return len(self.buffer) if self.buffer is not None else 0

    def report(self, key: str, level: int, message: str, category: str) -> None:
        """Record and log a problem, rate-limited per problem key."""
        self.problems.report(key, level, message, category)
        logger = self._loggers.get((key, category))
        if logger is None:
            logger = self.get_logger().get_child(f"{key}.{category}")
            self._loggers[(key, category)] = logger
        logger.warning(message, throttle_duration_sec=LOG_THROTTLE_S)

    def _guarded_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # keep recording; a full disk etc. is logged and retried
            self.report("record", diag.ERROR, f"recording failed: {exc!r}", "bad")

    def _tick(self) -> None:
        if self.done:
            return
        s = self.settings
        item = self.inputs.assemble()
        if item is None:
            return
        obs = item.obs
        if self.buffer is None:
            cams = obs.image_sizes
            source = (f"live: {', '.join(f'{c.topic} -> {c.slot}' for c in s.inputs.cameras)}, "
                      f"joints {s.inputs.joint_state_topic}")
            self.buffer = RecordedBuffer.create(
                s.buffer_path, cams, len(s.inputs.joint_names), source=source,
                shard_size=s.shard_size)
        try:
            self.buffer.append(obs)
        except ValueError as exc:  # e.g. a camera resolution that differs from the buffer's
            self.report("record", diag.ERROR, f"observation not recorded: {exc}", "bad")
            return
        n = self.recorded
        if n >= self._next_log or n >= s.samples:
            self.get_logger().info(f"recorded {n}/{s.samples} observations")
            self._next_log = n + max(1, s.samples // 10)
        if n >= s.samples:
            self._finish()

    def _finish(self) -> None:
        s = self.settings
        self.destroy_timer(self._timer)
        if self.buffer is not None:
            self.buffer.close()
        self.get_logger().info(f"calibration buffer {s.buffer_path}: {self.recorded} observations "
                               f"({self.recorded - self._start} new)")
        if s.quantize:
            self._quantize()
        self.done = True

    def _quantize(self) -> None:
        s = self.settings
        try:
            self.artifact = Path(self.quantize_fn(Path(s.buffer_path), Path(s.quantize_out)))
            self.get_logger().info(f"quantized artifact: {self.artifact}")
        except Exception as exc:
            self.get_logger().error(f"quantization failed: {exc!r}")
            self.exit_code = 1

    def close(self) -> None:
        """Flush what was recorded (Ctrl-C keeps every observation appended so far)."""
        if self.buffer is not None:
            self.buffer.close()


def main(argv: list[str] | None = None) -> int:
    """Record until the buffer is full (or Ctrl-C); exit code 1 on a failure."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = CalibrationNode()
    except ValueError as exc:  # SettingsError, BufferFormatError
        print(f"calibration_node: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        node.get_logger().info(f"interrupted: {node.recorded} observations kept")
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return node.exit_code


if __name__ == "__main__":
    sys.exit(main())
