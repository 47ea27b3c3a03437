"""The policy side of the pipe: start the LIBERO server in ``.venv-libero`` and talk to it.

numpy and the standard library only, so it runs in ``.venv`` beside torch. Usage::

    with LiberoClient() as sim:
        tasks = sim.tasks("libero_object")
        obs = sim.reset("libero_object", 0, init=3, resolution=128, settle=10)
        obs = sim.step(action)          # obs["agentview"], obs["wrist"], obs["state"], ...

The server's stderr (simulator warnings, tracebacks) goes to a log file (``log_path``, or a
temporary file), whose tail is quoted in errors. An error inside a request raises
:class:`SimRequestError` and the server keeps running; a server that exits or breaks the
stream raises :class:`SimServerError`; a reply that takes longer than the timeout kills the
server and raises :class:`SimServerError` too (the stream is out of step after it).
"""

import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quantvla_ros.sim.protocol import ProtocolError, encode, read_message

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-libero"
SERVER_MODULE = "quantvla_ros.sim.libero_server"


class SimServerError(RuntimeError):
    """The server is gone, out of step or too slow; it must be restarted."""


class SimRequestError(RuntimeError):
    """The server reported an error for one request (it is still usable)."""

    def __init__(self, message: str, remote_traceback: str = ""):
        """Keep the server's traceback next to the one-line message."""
        super().__init__(message)
        self.remote_traceback = remote_traceback


def libero_python(venv: str | os.PathLike | None = None) -> Path:
    """Return the LIBERO venv's interpreter (``$QUANTVLA_LIBERO_PYTHON`` overrides)."""
    override = os.environ.get("QUANTVLA_LIBERO_PYTHON")
    if override and venv is None:
        return Path(override)
    return Path(venv or DEFAULT_VENV) / "bin" / "python"


def server_environment(python: Path) -> dict[str, str]:
    """Return the environment of a LIBERO process: EGL, the config folder, this package."""
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.setdefault("LIBERO_CONFIG_PATH", str(python.parent.parent / "libero-config"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTHONHOME", None)
    return env


def libero_available(venv=None, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Return (True, "") when the LIBERO venv exists and imports libero, else (False, why)."""
    python = libero_python(venv)
    if not python.is_file():
        return False, f"no LIBERO environment at {python.parent.parent} (run `make libero`)"
    try:
        proc = subprocess.run([str(python), "-c", "import libero.libero.envs, mujoco"],
                              env=server_environment(python), capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return False, f"importing libero in {python} took over {timeout_s:.0f} s"
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return False, f"libero does not import in {python}: {tail[0]}"
    return True, ""


class LiberoClient:
    """A LIBERO server subprocess and the requests to it."""

    def __init__(self, venv=None, log_path=None, timeout_s: float = 600.0):
        """Start the server; ``timeout_s`` bounds every reply (environment creation included)."""
        self.python = libero_python(venv)
        if not self.python.is_file():
            raise SimServerError(f"no LIBERO interpreter at {self.python} (run `make libero`)")
        self.timeout_s = float(timeout_s)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="libero-server-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [str(self.python), "-m", SERVER_MODULE], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=server_environment(self.python),
            cwd=str(REPO_ROOT), bufsize=0)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._broken = False

    # -- transport --------------------------------------------------------------------------
    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _dead(self, what: str) -> SimServerError:
        self._broken = True
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else "is still running"
        return SimServerError(f"LIBERO server {what} (it {state}; log {self.log_path}):\n"
                              f"{self._log_tail()}")

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks, left, fd = [], n, self.proc.stdout.fileno()
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(timeout=remaining):
                self.kill()
                raise self._dead(f"did not answer within {self.timeout_s:.0f} s and was killed")
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def request(self, op: str, timeout_s: float | None = None, **fields) -> dict:
        """Send one request and return the reply's fields; raise on any failure."""
        if self._broken:
            raise SimServerError("LIBERO server is unusable after an earlier failure")
        try:
            self.proc.stdin.write(encode({"op": op, **fields}))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._dead(f"cannot take the {op!r} request") from None
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        try:
            reply = read_message(lambda n: self._read_exact(n, deadline))
        except ProtocolError as exc:
            raise self._dead(f"broke the stream ({exc})") from None
        if reply is None:
            self.proc.wait(timeout=10)
            raise self._dead(f"closed the stream during {op!r}")
        if not reply.pop("ok", False):
            raise SimRequestError(f"LIBERO server: {op}: {reply.get('error')}",
                                  reply.get("traceback", ""))
        return reply

    # -- requests ---------------------------------------------------------------------------
    def hello(self) -> dict:
        """Return the protocol version and the simulator's package versions."""
        return self.request("hello")

    def tasks(self, suite: str) -> list[dict]:
        """Return the tasks of ``suite`` (index, name, language, n_init_states)."""
        return self.request("tasks", suite=suite)["tasks"]

    def reset(self, suite: str, task: int, *, init: int | None = None, seed: int | None = None,
              resolution: int = 128, settle: int = 0) -> dict:
        """Reset to fixed init state ``init`` or a fresh placement from ``seed``."""
        if (init is None) == (seed is None):
            raise ValueError("give exactly one of init= (fixed state) or seed= (fresh)")
        fields = {"suite": suite, "task": int(task), "resolution": int(resolution),
                  "settle": int(settle)}
        fields.update({"init": int(init)} if init is not None else {"seed": int(seed)})
        return self.request("reset", **fields)

    def step(self, action, render: bool = True) -> dict:
        """Apply one 7-dim action; return the observation (without images if not ``render``)."""
        return self.request("step", action=np.asarray(action, dtype=np.float64).reshape(-1),
                            render=bool(render))

    def expert_action(self) -> np.ndarray:
        """Return the scripted expert's next action for the current episode."""
        return self.request("expert_action")["action"]

    def expert_label(self) -> np.ndarray:
        """Return the expert's memoryless label of the current state (for DAgger)."""
        return self.request("expert_label")["action"]

    # -- lifetime ---------------------------------------------------------------------------
    def kill(self):
        """Kill the server process at once."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self):
        """Ask the server to exit; kill it if it does not within 30 s."""
        if self.proc.poll() is None and not self._broken:
            try:
                self.request("close", timeout_s=30)
            except (SimServerError, SimRequestError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()

    def __enter__(self):
        """Return the client itself."""
        return self

    def __exit__(self, *exc):
        """Close the server."""
        self.close()

    def __del__(self):
        """Do not leave a server behind."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


if __name__ == "__main__":  # smoke check: python -m quantvla_ros.sim.client
    with LiberoClient() as sim:
        print(sim.hello(), file=sys.stderr)
