"""Ctrl-C at a safe point of the loop."""

from __future__ import annotations

import signal
import threading


class GracefulInterrupt:
    """Ctrl-C at a safe point. Inside ``with GracefulInterrupt() as stop:``, the first SIGINT only sets a flag, and
    :meth:`check` (called by the loop after every step) raises KeyboardInterrupt there. A KeyboardInterrupt raised
    wherever the signal lands can be swallowed (inside a weakref callback or ``__del__``, Python prints "Exception
    ignored" and carries on training); a checked flag cannot. A second Ctrl-C interrupts at once. Outside the main
    thread (where Python delivers no signals) this does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> GracefulInterrupt:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
