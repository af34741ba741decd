"""Estimating a point's cost before running it, so that one that would not fit is refused
instead of thrashing the machine.

Memory: the bytes a run's forward pass adds on top of what the process holds (weights, optimizer
state) are fitted as ``fixed + per_token * tokens`` on measured runs (short probe runs, or the
longest points of a sweep), then extrapolated; the worker adds the gradients. Time: the seconds
of a run are extrapolated from the two longest runs measured so far as ``c * tokens ** k``, with
k between 1 (linear layers, scans) and 2 (attention).
"""

import math
from dataclasses import dataclass

__all__ = ["PROBE_SECONDS", "LinearMemoryModel", "PowerLawTime", "format_bytes"]

PROBE_SECONDS = (4.0, 8.0)   # clip durations of the probe runs a first estimate is fitted on


def format_bytes(n):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@dataclass(frozen=True)
class LinearMemoryModel:
    """bytes(tokens) = fixed + per_token * tokens (bytes; per_token >= 0), least squares over
    the measured (tokens, bytes) points it was fitted on."""
    fixed: float
    per_token: float

    @classmethod
    def fit(cls, points):
        """points: at least two (tokens, bytes) pairs with at least two distinct token counts."""
        if len({t for t, _ in points}) < 2:
            raise ValueError(f"a linear fit needs two distinct token counts, got {points}")
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_b = sum(b for _, b in points) / n
        slope = (sum((t - mean_t) * (b - mean_b) for t, b in points)
                 / sum((t - mean_t) ** 2 for t, _ in points))
        slope = max(slope, 0.0)
        return cls(fixed=mean_b - slope * mean_t, per_token=slope)

    def predict(self, tokens):
        return max(self.fixed + self.per_token * tokens, 0.0)

    def describe(self):
        return f"{format_bytes(self.fixed)} + {format_bytes(self.per_token)} per token"


@dataclass(frozen=True)
class PowerLawTime:
    """seconds(tokens) = seconds_0 * (tokens / tokens_0) ** exponent, exponent in [1, 2], through
    the longest measured run (tokens_0, seconds_0)."""
    tokens_0: int
    seconds_0: float
    exponent: float

    @classmethod
    def fit(cls, points):
        """points: measured (tokens, seconds) pairs; one point gives a linear law."""
        points = sorted(points)
        t1, s1 = points[-1]
        exponent = 1.0
        if len(points) >= 2 and points[-2][0] < t1 and points[-2][1] > 0:
            t0, s0 = points[-2]
            exponent = math.log(s1 / s0) / math.log(t1 / t0) if s1 > 0 else 1.0
        return cls(t1, s1, min(max(exponent, 1.0), 2.0))

    def predict(self, tokens):
        return self.seconds_0 * (tokens / self.tokens_0) ** self.exponent
