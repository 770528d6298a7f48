"""Progress of the fan-out: a live line in a terminal, periodic plain lines in logs."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("mldebug_ray.progress")

LINE_INTERVAL_S = 10.0  # a CI log gets a line at most this often (plus every 10% done)


class Progress:
    """Counts finished runs; `mode` is live, lines, off or auto (live when `stream` is a TTY)."""

    def __init__(self, total: int, mode: str = "auto", stream: TextIO | None = None, label: str = "runs"):
        self.total = total
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "live" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.label = label
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._last_decile = -1

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = f" eta {eta:.0f}s" if rate > 0 and self.done < self.total else ""
        failed = f" ({self.failed} unreadable)" if self.failed else ""
        return f"[{self.done}/{self.total} {self.label}] {pct:3.0f}%{failed} elapsed {elapsed:.1f}s rate {rate:.2f}/s{eta_text}"

    def update(self, done: int = 1, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        if self.mode == "live":
            self.stream.write("\r" + self.text())
            self.stream.flush()
        elif self.mode == "lines":
            now = time.monotonic()
            decile = int(10 * self.done / self.total) if self.total else 10
            if decile != self._last_decile or now - self._last_line >= LINE_INTERVAL_S:
                self._last_decile = decile
                self._last_line = now
                log.info(self.text())

    def close(self) -> None:
        if self.mode == "live":
            self.stream.write("\r" + self.text() + "\n")
            self.stream.flush()
        elif self.mode == "lines" and self._last_decile != 10:
            log.info(self.text())
