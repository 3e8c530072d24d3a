"""Progress reporting: a tqdm bar on a terminal, plain log lines otherwise.

Bars redraw with carriage returns, which garble piped logs and CI output, so
when stderr is not a terminal progress is a few plain lines instead.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def log(message: str) -> None:
    """One line to stderr, kept clear of any bar that is drawing."""
    tqdm.write(message, file=sys.stderr)


class Progress:
    """Count work done out of ``total``; use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "case", stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.skipped = 0
        self.start = time.perf_counter()
        self._last_line = self.start
        self._last_frac = 0.0
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False)
        else:
            self._line(f"{desc}: 0/{total} {unit}s")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def skip(self, n: int) -> None:
        """Count ``n`` items finished earlier (resumed work), without touching the rate."""
        self.skipped += n
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif n:
            self._line(f"{self.desc}: {n}/{self.total} {self.unit}s already done")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        frac = self.done / max(self.total, 1)
        # A line per 10 % or per 30 s is enough to follow a long job in a log.
        if self.done < self.total and (frac - self._last_frac >= 0.1 or now - self._last_line >= 30):
            rate = (self.done - self.skipped) / max(now - self.start, 1e-9)
            self._line(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({rate:.2f}/s)")
            self._last_line, self._last_frac = now, frac

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(f"{self.desc}: {self.done}/{self.total} {self.unit}s in {time.perf_counter() - self.start:.1f}s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
