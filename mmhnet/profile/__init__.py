"""Memory and time profiling of long clips (the 5-minute question): ``mmhnet profile``.

    from mmhnet.profile import profile, render_report, write_json, plot_memory
    records = profile("S", seconds=[8, 30, 60, 120, 300], modes=["sample_step", "train_step"])
    print(render_report(records))
    write_json(records, "profile.json"); plot_memory(records, "profile.png")

Each point runs in a fresh process (worker.py); docs/profile.md describes the method.
"""

from .estimate import LinearMemoryModel, PowerLawTime, format_bytes
from .plot import plot_memory
from .records import ProfileRecord, read_json, write_json
from .report import growth_ratios, progress_line, render_markdown, render_report, table_rows
from .runner import profile, run_point
from .workloads import MODEL_NAMES, MODES, WorkloadSpec

__all__ = ["profile", "run_point", "ProfileRecord", "write_json", "read_json", "render_report",
           "render_markdown", "table_rows", "growth_ratios", "progress_line", "plot_memory",
           "WorkloadSpec", "MODES", "MODEL_NAMES", "LinearMemoryModel", "PowerLawTime",
           "format_bytes"]
