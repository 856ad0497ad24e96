"""Ctrl-C and SIGTERM (a scheduler preempting the job) end a run at the next step boundary, with a checkpoint.

`StopRequests` installs handlers for SIGINT and SIGTERM while training runs. The first signal only sets a flag: the
step in flight finishes, its metrics are written, a checkpoint is saved, and the run ends, ready for
`nativerl train --resume RUN_DIR`. Phases without step boundaries (the held-out evaluation before and after
training) run inside `stop.immediately()`: there the first signal raises `Interrupted` at once (an evaluation keeps
no state, so nothing is lost). A second signal of either kind means "stop now": it raises `SystemExit(128 + signal)`
wherever the run is (a hung reward, a slow checkpoint), so the exit code is 130 / 143 in every phase and `finally`
blocks (Ray actors, log files) still run. Handlers can only be installed from the main thread; elsewhere (a run
started inside a worker thread) this does nothing and signals keep their usual meaning.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived in a phase that leaves at once (`StopRequests.immediately`). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (a reward call, a retry loop) swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def exit_code(signal_name: str) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(getattr(signal, signal_name))


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Outside a run's loop (start-up, reports): SIGINT / SIGTERM exit at once with 128 + signal, running `finally`
    blocks and atexit handlers (Ray's shutdown) on the way; a process killed by the default handler runs neither.
    The previous handlers are back when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handle) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequests:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._immediate = False

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def immediately(self) -> Iterator[None]:
        """Inside this block the first signal raises `Interrupted` (a signal that came earlier does so on entry)."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name)
        previous, self._immediate = self._immediate, True
        try:
            yield
        finally:
            self._immediate = previous

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:  # the second signal: stop now, whatever is in flight
            raise SystemExit(128 + signum)
        self.signal_name = signal.Signals(signum).name
        if self._immediate:
            raise Interrupted(self.signal_name)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
