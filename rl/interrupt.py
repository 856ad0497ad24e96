"""Ctrl-C and SIGTERM (a scheduler preempting the job) end a run at the next step boundary, with a checkpoint.

`StopRequests` installs handlers for SIGINT and SIGTERM while training runs. The first signal only sets a flag: the
step in flight finishes, its metrics are written, a checkpoint is saved, and the run ends, ready for
`nativerl train --resume RUN_DIR`. A second Ctrl-C while that happens interrupts at once (the default handler is
back after the first). Handlers can only be installed from the main thread; elsewhere (a run started inside a
worker thread) this does nothing and signals keep their usual meaning.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        # A second Ctrl-C means "now": give SIGINT its previous handler (Python's KeyboardInterrupt) back.
        if signum == signal.SIGINT and signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
