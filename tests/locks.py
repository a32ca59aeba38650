"""Holding a checkpoint folder's lock from another thread, for the tests of what a second training sees."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from workbench.atv.checkpoints import checkpoint_lock


@contextlib.contextmanager
def lock_held_by_a_thread(directory: Path) -> Iterator[None]:
    """While the block runs, another thread holds the lock of `directory` (synchronised by events, no timing)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with checkpoint_lock(directory):
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(60), "the other thread never took the lock"
        yield
    finally:
        release.set()
        thread.join()
