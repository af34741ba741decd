"""Timing and table helpers shared by the benchmark runner and the pytest-benchmark files."""

import datetime
import platform
import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device="cpu", warmup=1, reps=5, min_time=0.0):
    """Median wall time of fn() in seconds (CUDA-synchronised), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 100:
            break
    return statistics.median(times)


def copy_bandwidth(device, elements=1 << 26):
    """Bytes per second (read + write) of a float32 copy between two tensors far larger than the
    last-level cache (256 MB each): the memory bandwidth a streaming kernel can hope for. The
    source is written first: never-written CPU memory reads as the shared zero page, which
    overstates the bandwidth by about half."""
    src = torch.ones(elements, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * src.numel() * src.element_size() / seconds


def machine_description(device="cpu"):
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    import os

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def today():
    return datetime.date.today().isoformat()


class Table:
    """A titled table printed as GitHub markdown (so it can be pasted into RESULTS.md)."""

    def __init__(self, title, columns, note=None):
        self.title, self.columns, self.rows, self.note = title, list(columns), [], note

    def add(self, *row):
        self.rows.append([_fmt(v) for v in row])

    def render(self):
        widths = [max(len(str(c)), *(len(r[i]) for r in self.rows)) if self.rows else len(str(c))
                  for i, c in enumerate(self.columns)]
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(self.columns, widths)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


def _fmt(v):
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def fmt_ms(seconds):
    return f"{seconds * 1e3:.2f}" if seconds is not None else "-"
