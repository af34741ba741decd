"""A plain-text progress bar on stderr (no dependency): rewritten in place on a terminal, one
line per tenth of the work otherwise."""

import sys
import time

__all__ = ["TextProgress"]


class TextProgress:
    """Callable progress(done, total) for euler_sample and the training loop."""

    def __init__(self, label, stream=None, width=30):
        self.label, self.width = label, width
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self._last_tenth = -1

    def __call__(self, done, total):
        tenth = 10 * done // total
        if not self.interactive and tenth == self._last_tenth and done != total:
            return
        self._last_tenth = tenth
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{total} {time.perf_counter() - self.start:6.1f} s"
        end = "\n" if done == total or not self.interactive else ""
        self.stream.write(("\r" if self.interactive else "") + line + end)
        self.stream.flush()
