"""Run a node executable as a child process, isolated on its own ROS domain.

Used by the demo and the tests: ``python -m <module> --ros-args --params-file F -p k:=v``, with
this interpreter, so the child imports the installed package (never a repository path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def pick_domain_id(salt: int = 0) -> int:
    """Return a domain id in 10..99 derived from the process id, to keep concurrent runs apart.

    Ids above 101 clash with ephemeral ports on Linux; 0 is everybody's default.
    """
    return 10 + (os.getpid() + salt) % 90


def ros_env(domain_id: int, log_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Return the current environment with the domain id, loopback discovery and a log dir."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class NodeProcess:
    """A node executable in a child process; its output goes to ``log_path``."""

    def __init__(self, module: str, *, params_file: str | os.PathLike[str] | None = None,
                 overrides: dict[str, object] | None = None, domain_id: int,
                 log_path: str | os.PathLike[str], ros_log_dir=None,
                 node_name: str | None = None) -> None:
        """Start ``python -m module --ros-args ...`` (``node_name`` remaps the node's name)."""
        cmd = [sys.executable, "-m", module, "--ros-args"]
        if node_name is not None:
            cmd += ["-r", f"__node:={node_name}"]
        if params_file is not None:
            cmd += ["--params-file", str(params_file)]
        for key, value in (overrides or {}).items():
            cmd += ["-p", f"{key}:={_param_text(value)}"]
        self.cmd = cmd
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT,
            env=ros_env(domain_id, ros_log_dir), start_new_session=True)

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait for exit; return the exit code, or None if still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL, each after ``timeout`` / 2; return the code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            if self.wait(timeout / 2) is not None:
                break
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        """Return everything the process wrote so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> NodeProcess:
        """Return self; leaving the block stops the process."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the process."""
        self.stop()


def _param_text(value: object) -> str:
    """Format a value for ``-p name:=value`` (YAML syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_param_text(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'" if value else "''"
    return str(value)
