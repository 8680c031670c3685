"""Progress of a scoring job on stderr: slides done/total, patches/s, ETA, and each failure (only
the failures under ``idcmap -q``)."""

from __future__ import annotations

import logging
import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, already_done: int = 0, stream=None, interval: float | None = None):
        self.total, self.done_before = total, already_done
        self.done = self.failed = self.patches = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.start = self._last = time.monotonic()
        self.quiet = not logging.getLogger("idcmap").isEnabledFor(logging.INFO)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.done + self.failed
        remaining = self.total - self.done_before - finished
        rate = self.patches / elapsed if elapsed > 0 else 0.0
        eta = _clock(elapsed / finished * remaining) if finished else "?"
        return (
            f"slides {self.done_before + self.done}/{self.total} done, {self.failed} failed | "
            f"{self.patches:,} patches, {rate:,.0f} patches/s | elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def _print(self, text: str, newline: bool):
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def tick(self, force: bool = False):
        now = time.monotonic()
        if not self.quiet and (force or now - self._last >= self.interval):
            self._last = now
            self._print(self.line(), newline=False)

    def slide_started(self, key: str):
        self.tick()

    def patches_scored(self, n: int):
        self.patches += n
        self.tick()

    def slide_done(self, key: str, patches: int, failed: str = ""):
        if failed:
            self.failed += 1
            self._print(f"FAILED {key}: {failed}", newline=True)
        else:
            self.done += 1
        self.tick(force=True)

    def close(self):
        if not self.quiet:
            self._print(self.line(), newline=True)
