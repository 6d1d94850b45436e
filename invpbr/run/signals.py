"""SIGINT and SIGTERM as requests to stop a run after its current step
(``invpbr run``: :mod:`.guarded`, :mod:`.reconstruct_run`; ``invpbr batch``)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any


class InstallsSignalHandlers:
    """``with obj:`` makes ``obj.handle(signum, frame)`` the SIGINT and SIGTERM
    handler (from the main thread only: Python allows no other) and puts the
    previous handlers back on exit. Subclasses define ``handle`` and a
    ``previous`` dict."""

    previous: dict[int, Any]

    def handle(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class Signals(InstallsSignalHandlers):
    """SIGINT and SIGTERM as requests to stop (inside a ``with`` block).

    Until :attr:`urgent` is set, a signal only asks the run to stop after its
    current step (:meth:`__call__` turns True); once it is set, a further
    signal raises KeyboardInterrupt where the program is.
    """

    received: list[int] = field(default_factory=list)
    urgent: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def __call__(self) -> bool:
        return bool(self.received)

    def handle(self, signum, frame) -> None:
        self.received.append(signum)
        if self.urgent:
            self.urgent = False  # (one KeyboardInterrupt; later signals are recorded)
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.received[0])
