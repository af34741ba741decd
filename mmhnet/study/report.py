"""The study's outputs: results.json, a markdown table (results.md) and, when matplotlib is
installed (the ``plot`` extra), length_generalization.png."""

import json
import os

__all__ = ["results_table", "write_report", "plot_results"]


def results_table(results):
    """Markdown table: one row per model and duration."""
    lines = ["| model | params | train steps | duration | frames | per-frame error "
             "| error vs 8 s | event alignment |",
             "|---|---|---|---|---|---|---|---|"]
    for m in results["models"].values():
        base = m["rows"][0]["error"]
        for row in m["rows"]:
            lines.append(f"| {m['label']} | {m['parameters'] / 1e6:.2f}M | {m['train_steps']} | "
                         f"{row['seconds']:g} s | {row['frames']} x {row['clips']} | "
                         f"{row['error']:.4f} | {row['error'] / base:.2f}x | "
                         f"{row['alignment']:.3f} |")
    return "\n".join(lines)


def plot_results(results, path):
    """Per-frame error and event alignment against duration, both models. Returns False when
    matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_align) = plt.subplots(1, 2, figsize=(9, 3.6))
    for m in results["models"].values():
        secs = [r["seconds"] for r in m["rows"]]
        ax_err.plot(secs, [r["error"] for r in m["rows"]], marker="o", label=m["label"])
        ax_align.plot(secs, [r["alignment"] for r in m["rows"]], marker="o", label=m["label"])
    train = results["settings"]["train_seconds"]
    for ax, title in ((ax_err, "per-frame error (lower is better)"),
                      (ax_align, "event alignment (higher is better)")):
        ax.set_xscale("log")
        ax.axvline(train, color="grey", linestyle=":", label=f"training length ({train:g} s)")
        ax.set_xlabel("generated duration (s)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_align.set_ylim(0, 1.05)
    ax_err.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results, folder):
    """Write the three files; returns the lines to print (the table and where things went)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = results_table(results)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(table + "\n")
    png = os.path.join(folder, "length_generalization.png")
    lines = [table, ""]
    if plot_results(results, png):
        lines.append(f"wrote {png}")
    else:
        lines.append("matplotlib is not installed (pip install -e '.[plot]'): no PNG written")
    lines.append(f"wrote {folder}/results.json and {folder}/results.md "
                 f"({results.get('total_seconds', 0):.0f} s in all)")
    return lines
