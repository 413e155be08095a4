"""How long work says how far it got and what it skipped: one ``Reporter`` passed down, never a print.

Library calls take ``reporter=SILENT`` by default, so the library itself prints nothing. The CLI passes a
``TerminalReporter``: a progress bar on a terminal (one summary line per step when stderr is not one,
nothing with ``--quiet``) and every skipped file as a ``warning:`` line.
"""

from __future__ import annotations

import sys
import time


class Steps:
    """A counter of the steps of one piece of work; this one shows nothing."""

    def __enter__(self):
        return self

    def advance(self, note: str = ""):
        """One more step done; ``note`` (a loss, say) may be shown beside the count."""

    def __exit__(self, *exc):
        return False


class Reporter:
    """Says nothing: what a library caller gets unless it passes another reporter."""

    def progress(self, total: int, title: str) -> Steps:
        return Steps()

    def warn(self, message: str):
        """Something was left out (an unreadable photo, a folder that cannot be listed), and why."""


SILENT = Reporter()


class TerminalReporter(Reporter):
    """The CLI's: bars (or summary lines) on stderr unless ``quiet``, and every skip as a warning."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def progress(self, total: int, title: str) -> Steps:
        return Bar(total, title, self.quiet)

    def warn(self, message: str):
        print(printable(f"warning: {message}"), file=sys.stderr)


def printable(text: str) -> str:
    """Output is always valid UTF-8: bytes of a file name that are not UTF-8 (surrogates) show as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable_values(data):
    """``data`` with every string made ``printable``, so its JSON is valid UTF-8 (the CLI's ``--json`` and
    the service's answers alike)."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_values(key): printable_values(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [printable_values(value) for value in data]
    return data


class Bar(Steps):
    """Counts steps; on a terminal draws a bar with speed and ETA, otherwise prints one summary line."""

    def __init__(self, total: int, title: str, quiet: bool = False):
        self.total, self.title, self.done = total, title, 0
        self.live = not quiet and sys.stderr.isatty()
        self.quiet = quiet
        self.started = time.time()
        self.note = ""

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
