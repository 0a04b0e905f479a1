"""A heartbeat on a thread of its own: what tells other machines that a worker still holds its claim or trial."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def beating_thread(beat: Callable[[], None], interval: float, name: str) -> Iterator[None]:
    """Call `beat` every `interval` seconds on a thread of its own until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            beat()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
