"""A process of a multi-worker host shows its supervisor that its event loop still runs.

The supervisor (`app.host`) hands each front end and inference process the write end of a pipe.
Once a second the process's event loop writes a byte to it, from a timer on that loop: a thread
could go on beating while the loop itself is stuck (a deadlock, a call that never returns), and
that is what the supervisor watches for. A process whose beats stop for `SERVE_HANG_TIMEOUT_S` is
killed and started again. Before that, such a process kept its sockets open: a hung inference
process left its host answering 503 for good, and a hung front end kept taking connections it
never answered, while `/healthz` (answered by the other front ends) still said all was well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator

BEAT_EVERY_S = 1.0


class Heartbeat:
    def __init__(self, fd: int, every_s: float = BEAT_EVERY_S) -> None:
        self._fd = fd
        self._every_s = every_s
        self._timer: asyncio.TimerHandle | None = None
        # Whether the process is well besides its loop running: while it says no, no beats go.
        self.check: Callable[[], bool] | None = None
        # Never block the loop on a supervisor that has stopped reading (stopped, or being debugged).
        os.set_blocking(fd, False)

    def start(self) -> None:
        """Beat now, and then every ``every_s`` from the running event loop."""
        self._beat()

    def _beat(self) -> None:
        try:
            if self.check is None or self.check():
                os.write(self._fd, b".")
        except BlockingIOError:  # the pipe is full: the supervisor has not read for a long while
            pass
        except OSError:  # the supervisor is gone (it was killed): the process stops on its own
            return
        self._timer = asyncio.get_running_loop().call_later(self._every_s, self._beat)

    def stop(self) -> None:
        """No more beats: the process is about to exit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(OSError):
            os.close(self._fd)


@contextlib.contextmanager
def beating(fd: int | None) -> Iterator[Heartbeat | None]:
    """Beat down ``fd`` from the running event loop while the block runs; without ``fd`` (a process
    not started by a supervisor), nothing."""
    if fd is None:
        yield None
        return
    heartbeat = Heartbeat(fd)
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
