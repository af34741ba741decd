"""The PNG plot: peak memory against clip duration, log-log, one line per (model, mode).

Measured points are filled markers on solid lines; estimates of points that were refused or
skipped are open markers on dotted lines. Needs matplotlib (``pip install "mmhnet[plot]"``).
"""

from .report import MODEL_LABELS

__all__ = ["plot_memory"]

COLORS = {"mmhnet": "tab:blue", "baseline": "tab:red"}
MARKERS = {"sample_step": "o", "sample": "s", "train_step": "^"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the plot needs matplotlib: pip install matplotlib "
                           "(or pip install -e \".[plot]\")") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_memory(records, path, title=None, memory_limit_bytes=None):
    """Write the plot of ``records`` to ``path`` (PNG). memory_limit_bytes: the horizontal
    limit line (default: the smallest limit the records were checked against)."""
    plt = _pyplot()
    if memory_limit_bytes is None:
        limits = [r.memory_limit_bytes for r in records if r.memory_limit_bytes]
        memory_limit_bytes = min(limits) if limits else None
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9.5, 5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    series = {}
    for r in records:
        series.setdefault((r.model, r.mode, r.checkpointing), []).append(r)
    for (model, mode, ckpt), rows in sorted(series.items()):
        rows.sort(key=lambda r: r.seconds)
        label = f"{MODEL_LABELS.get(model, model)} {mode}{' (ckpt)' if ckpt else ''}"
        style = dict(color=COLORS.get(model, "tab:gray"), marker=MARKERS.get(mode, "o"))
        measured = [(r.seconds, r.peak_bytes / 2**30) for r in rows if r.measured]
        if measured:
            ax.plot(*zip(*measured), linestyle="-" if not ckpt else "--", label=label, **style)
        estimated = [(r.seconds, r.estimated_peak_bytes / 2**30) for r in rows
                     if not r.measured and r.estimated_peak_bytes]
        if estimated:
            ax.plot(*zip(*(measured[-1:] + estimated)), linestyle=":", markerfacecolor="none",
                    label=None if measured else label + " (estimate)", **style)
    if memory_limit_bytes:
        ax.axhline(memory_limit_bytes / 2**30, color="black", linewidth=0.8, linestyle="--")
        ax.text(0.01, memory_limit_bytes / 2**30, "memory limit: points above it are refused",
                transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    some = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(some)
    ax.tick_params(which="minor", labelsize=7)
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(title or "Peak memory against duration")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8, title="dotted, open: estimates\nof points not run", title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
