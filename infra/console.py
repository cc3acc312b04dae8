"""What the `make` commands print: one line at a time, flushed at once, so progress
shows while a long step runs."""

from __future__ import annotations


def say(message: str, end: str = "\n", *, prefix: str = "") -> None:
    print(prefix + message, end=end, flush=True)
