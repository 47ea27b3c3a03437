"""Drive another process's lifecycle node through its change_state / get_state services."""

from __future__ import annotations

import threading
import time

from lifecycle_msgs.srv import ChangeState, GetState

TRANSITIONS = ("configure", "activate", "deactivate", "cleanup", "shutdown")


class LifecycleClient:
    """Service clients for ``target`` (a node name such as ``/quantvla_node``).

    ``node`` must be spun by an executor on another thread: calls block on futures.
    """

    def __init__(self, node, target: str) -> None:
        """Create the clients."""
        target = target if target.startswith("/") else "/" + target
        self.target = target
        self._change = node.create_client(ChangeState, f"{target}/change_state")
        self._get = node.create_client(GetState, f"{target}/get_state")

    def wait_for_services(self, timeout: float) -> bool:
        """Wait until the target's services are reachable."""
        deadline = time.monotonic() + timeout
        for client in (self._change, self._get):
            left = deadline - time.monotonic()
            if left <= 0 or not client.wait_for_service(timeout_sec=left):
                return False
        return True

    def change_state(self, transition: str, timeout: float = 60.0) -> bool:
        """Request a transition by label; return the target's success flag."""
        if transition not in TRANSITIONS:
            raise ValueError(f"unknown transition {transition!r}; expected one of {TRANSITIONS}")
        request = ChangeState.Request()
        request.transition.label = transition
        return bool(_call(self._change, request, timeout).success)

    def get_state(self, timeout: float = 10.0) -> str:
        """Return the target's current state label (e.g. 'unconfigured', 'active')."""
        return str(_call(self._get, GetState.Request(), timeout).current_state.label)


def _call(client, request, timeout: float):
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"service {client.srv_name} not available after {timeout:.0f} s")
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        client.remove_pending_request(future)
        raise TimeoutError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
    return future.result()
