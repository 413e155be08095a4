"""A progress bar on stderr that stays quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts steps; on a terminal draws a bar with speed and ETA, otherwise prints one summary line."""

    def __init__(self, total: int, title: str, quiet: bool = False):
        self.total, self.title, self.done = total, title, 0
        self.live = not quiet and sys.stderr.isatty()
        self.quiet = quiet
        self.started = time.time()
        self.note = ""

    def __enter__(self):
        return self

    def advance(self, note: str = ""):
        self.done += 1
        self.note = note
        if self.live:
            self.draw()

    def draw(self):
        elapsed = time.time() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(30 * self.done / max(1, self.total))
        sys.stderr.write(f"\r{self.title} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                         f"{rate:.1f}/s ETA {eta:.0f}s {self.note}   ")
        sys.stderr.flush()

    def __exit__(self, *exc):
        if self.live:
            sys.stderr.write("\n")
        elif not self.quiet:
            elapsed = time.time() - self.started
            sys.stderr.write(f"{self.title}: {self.done}/{self.total} in {elapsed:.0f}s {self.note}\n")
        return False
