"""One inference thread fed by a single-slot mailbox: the newest request wins.

The executor thread never waits for the model. A request that arrives while another one is
still pending replaces it (the replaced one counts as dropped), so nothing queues up behind a
slow inference and the robot always acts on the freshest observation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class LatestWorker:
    """Run ``handler(item)`` on a background thread for the most recent submitted item.

    ``handler`` must not raise (exceptions are passed to ``on_error`` and the thread goes on).
    """

    def __init__(self, handler: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], name: str = "inference") -> None:
        """Start the thread."""
        self._handler, self._on_error = handler, on_error
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._stop = False
        self._busy = False
        self.dropped = 0
        self.done = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Return True while an item is being handled or waiting."""
        with self._cond:
            return self._busy or self._has_pending

    def submit(self, item: Any) -> bool:
        """Offer ``item``; return False if it replaced a pending one (counted in ``dropped``)."""
        with self._cond:
            if self._stop:
                return False
            replaced = self._has_pending
            if replaced:
                self.dropped += 1
            self._pending, self._has_pending = item, True
            self._cond.notify_all()
            return not replaced

    def clear(self) -> None:
        """Forget a pending item (not counted as dropped: nobody wants it any more)."""
        with self._cond:
            self._pending, self._has_pending = None, False
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is handled or pending; return False after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._busy or self._has_pending), timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread after the item in hand; return True if it ended within ``timeout``."""
        with self._cond:
            self._stop = True
            self._pending, self._has_pending = None, False
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._pending, self._has_pending = self._pending, None, False
                self._busy = True
            try:
                self._handler(item)
            except Exception as exc:  # the thread must survive a failed inference
                self._on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self.done += 1
                    self._cond.notify_all()
