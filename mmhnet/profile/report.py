"""The profile as tables (GitHub markdown) and the growth summary."""

from .estimate import format_bytes

__all__ = ["TABLE_COLUMNS", "table_rows", "render_markdown", "growth_ratios", "render_report",
           "progress_line"]

MODEL_LABELS = {"mmhnet": "MMHNet", "baseline": "attention"}
TABLE_COLUMNS = ["mode", "seconds", "tokens", "model", "peak", "weights", "grads + optimizer",
                 "activations", "act. KiB/token", "s/step", "note"]


def _mib(n):
    """Bytes as MiB, or as GiB from 10 GiB up."""
    if n is None:
        return "-"
    return f"{n / 2**30:,.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:,.0f} MiB"


def table_rows(records):
    """One row per record, in TABLE_COLUMNS order, side by side by (mode, seconds)."""
    ordered = sorted(records, key=lambda r: (r.mode, r.checkpointing, r.seconds,
                                             list(MODEL_LABELS).index(r.model)))
    rows = []
    for r in ordered:
        model = MODEL_LABELS.get(r.model, r.model) + (" (ckpt)" if r.checkpointing else "")
        if r.measured:
            peak = _mib(r.peak_bytes)
            per_token = f"{r.activation_bytes / r.tokens / r.batch / 1024:.1f}"
            note = f"est. {_mib(r.estimated_peak_bytes)}" if r.estimated_peak_bytes else ""
        else:
            peak = f"~{_mib(r.estimated_peak_bytes)}" if r.estimated_peak_bytes else "-"
            per_token, note = "-", r.message.split(":")[0] if r.message else r.status
        step = f"{r.seconds_per_step:.2f}" if r.seconds_per_step else (
            f"~{r.estimated_seconds_per_step:.0f}" if r.estimated_seconds_per_step else "-")
        rows.append([r.mode, f"{r.seconds:g}", str(r.tokens), model, peak, _mib(r.weights_bytes),
                     _mib(r.grad_bytes + r.optimizer_bytes), _mib(r.activation_bytes), per_token,
                     step, note])
    return rows


def render_markdown(columns, rows, title=None, note=None):
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def growth_ratios(records, short=30.0, long=300.0):
    """{(model, mode, checkpointing): (peak ratio, activation ratio)} of the measured points at
    ``long`` and ``short`` seconds, where both were measured."""
    measured = {(r.model, r.mode, r.checkpointing, r.seconds): r for r in records if r.measured}
    ratios = {}
    for (model, mode, ckpt, seconds), r_long in measured.items():
        r_short = measured.get((model, mode, ckpt, short))
        if seconds == long and r_short is not None:
            ratios[(model, mode, ckpt)] = (r_long.peak_bytes / r_short.peak_bytes,
                                           r_long.activation_bytes / max(r_short.activation_bytes, 1))
    return ratios


def render_report(records, title="Memory and time profile"):
    """The table, the refusals and skips in full, and the 300 s / 30 s growth ratios."""
    first = records[0] if records else None
    note_parts = []
    if first is not None:
        note_parts.append(f"Config {first.config}, batch {first.batch}, {first.device}; memory: "
                          f"{first.meter or 'see records'}, above the process footprint after "
                          f"imports ({_mib(first.runtime_bytes)}).")
    for r in records:
        if r.status in ("refused", "skipped", "failed"):
            note_parts.append(f"- {MODEL_LABELS.get(r.model, r.model)} {r.mode} "
                              f"{r.seconds:g} s: {r.message}")
    for (model, mode, ckpt), (peak, act) in sorted(growth_ratios(records).items()):
        note_parts.append(f"- growth 300 s / 30 s, {MODEL_LABELS.get(model, model)} {mode}"
                          f"{' (ckpt)' if ckpt else ''}: peak x{peak:.2f}, activations x{act:.2f}")
    return render_markdown(TABLE_COLUMNS, table_rows(records), title, "\n".join(note_parts))


def progress_line(record):
    """One line per record as a sweep goes."""
    peak = record.peak_bytes if record.measured else record.estimated_peak_bytes
    peak_text = ("" if record.measured else "~") + format_bytes(peak) if peak is not None else "-"
    step = f"{record.seconds_per_step:.2f} s/step" if record.seconds_per_step else ""
    return (f"{MODEL_LABELS.get(record.model, record.model):9s} {record.mode:11s} "
            f"{record.seconds:7g} s  {record.status:8s} peak {peak_text:>11s}  {step}  "
            f"{'' if record.measured else record.message}").rstrip()
