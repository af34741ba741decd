"""Profiling a sweep of points, each in a fresh process.

    records = profile("S", seconds=[8, 30, 60, 120, 300], modes=["sample_step", "train_step"])

For every (mode, model) the durations run shortest first. Each point's memory estimate comes from
the two longest points of its series measured before it (or from probe runs in its own process
while there are fewer). A point longer than one already refused is refused without running; with a ``time_budget`` a point whose estimated wall time
(extrapolated from the series' measured points, ``PowerLawTime``) exceeds what is left of the
budget is skipped. Both carry an estimated peak extrapolated from the last measured point with
its fitted bytes per token.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from mmhnet.model.config import get_config
from mmhnet.model.features import frame_counts

from .estimate import PROBE_SECONDS, LinearMemoryModel, PowerLawTime
from .meter import MALLOC_ENV
from .records import ProfileRecord
from .workloads import MODEL_NAMES, WorkloadSpec

__all__ = ["profile", "run_point"]


def run_point(spec: WorkloadSpec, memory_limit=None, probe_seconds=PROBE_SECONDS,
              memory_model=None):
    """Profile one point in a fresh Python process (worker.profile_point has the arguments).
    Returns (ProfileRecord, wall seconds)."""
    request = json.dumps({"spec": asdict(spec), "memory_limit": memory_limit,
                          "probe_seconds": list(probe_seconds),
                          "memory_model": asdict(memory_model) if memory_model else None})
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mmhnet.profile.worker", request],
                         env=dict(os.environ, **MALLOC_ENV), capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        if out.returncode == -9:
            reason = "killed by SIGKILL (the kernel's out-of-memory killer?)"
        elif out.returncode < 0:
            reason = f"killed by signal {-out.returncode}"
        else:
            reason = f"exit status {out.returncode}"
        record = ProfileRecord(model=spec.model, mode=spec.mode, seconds=spec.seconds, tokens=0,
                               peak_bytes=None, seconds_per_step=None, config=spec.config,
                               device=spec.device, batch=spec.batch,
                               checkpointing=spec.checkpointing, status="failed",
                               message=f"worker {reason}: {out.stderr.strip()[-1500:]}")
        return record, wall
    return ProfileRecord.from_dict(json.loads(lines[-1])), wall


def _series_model(series):
    """LinearMemoryModel of what a run's forward adds (activations and inputs), from the
    measured (record, wall) pairs of a series: through its two longest runs; with one run, its
    slope fitted in that run's process, else proportional to tokens; None without runs."""
    runs = [r for r, _ in series]
    if len(runs) >= 2:
        return LinearMemoryModel.fit([(r.tokens, _forward_bytes(r)) for r in runs[-2:]])
    if not runs:
        return None
    r = runs[-1]
    if r.fit_bytes_per_token is None:
        return LinearMemoryModel(0.0, _forward_bytes(r) / r.tokens)
    return LinearMemoryModel(_forward_bytes(r) - r.fit_bytes_per_token * r.tokens,
                             r.fit_bytes_per_token)


def _forward_bytes(record):
    return record.activation_bytes + record.inputs_bytes


def _unrun(spec, tokens, series, status, message):
    record = ProfileRecord(model=spec.model, mode=spec.mode, seconds=spec.seconds, tokens=tokens,
                           peak_bytes=None, seconds_per_step=None, config=spec.config,
                           device=spec.device, batch=spec.batch,
                           steps=spec.steps if spec.mode == "sample" else 1,
                           checkpointing=spec.checkpointing, status=status, message=message)
    model = _series_model(series)
    if model is not None:
        last = series[-1][0]
        record.estimated_peak_bytes = int(last.held_bytes + last.grad_bytes
                                          + model.predict(tokens))
        record.params, record.weights_bytes = last.params, last.weights_bytes
        record.grad_bytes, record.optimizer_bytes = last.grad_bytes, last.optimizer_bytes
    return record


def profile(config="S", seconds=(8, 30, 60, 120, 300), modes=("sample_step",),
            models=MODEL_NAMES, *, batch=1, steps=25, checkpointing=False, device=None,
            memory_limit=None, time_budget=None, probe_seconds=PROBE_SECONDS, on_record=None):
    """Profile every (mode, model, duration); returns the ProfileRecords in that order.

    config: preset name; seconds: clip durations; modes: among workloads.MODES; models: among
    "mmhnet", "baseline"; steps: Euler steps of full sampling; checkpointing: recompute blocks
    in training; device: "cpu" or "cuda" (default: cuda when available); memory_limit: bytes a
    point may hold at its peak (default: 90% of what is available); time_budget: seconds for the
    whole sweep, or None; on_record(record) is called as each record is ready.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = get_config(config)
    started = time.perf_counter()
    records = []
    for mode in modes:
        for model in models:
            series, refused = [], None
            for sec in sorted(seconds):
                spec = WorkloadSpec(config=config, model=model, mode=mode, seconds=float(sec),
                                    batch=batch, steps=steps, checkpointing=checkpointing,
                                    device=device)
                tokens = frame_counts(cfg, sec).audio
                record = _next_record(spec, tokens, series, refused, time_budget, started,
                                      memory_limit, probe_seconds)
                if record.status == "refused" and refused is None:
                    refused = record
                records.append(record)
                if on_record is not None:
                    on_record(record)
    return records


def _next_record(spec, tokens, series, refused, time_budget, started, memory_limit,
                 probe_seconds):
    """Run (or refuse, or skip) one point of a series; ``series`` collects (record, wall)."""
    last = series[-1][0] if series else None
    if refused is not None:
        record = _unrun(spec, tokens, series, "refused",
                        f"refused: longer than {refused.seconds:g} s, which was refused")
        if record.estimated_peak_bytes is None:
            record.estimated_peak_bytes = refused.estimated_peak_bytes
        return record
    if time_budget is not None and series:
        law = PowerLawTime.fit([(r.tokens, r.seconds_total) for r, _ in series])
        overhead = series[-1][1] - series[-1][0].seconds_total
        estimate = overhead + law.predict(tokens)
        left = max(time_budget - (time.perf_counter() - started), 0.0)
        if estimate > left:
            record = _unrun(spec, tokens, series, "skipped",
                            f"skipped: about {estimate:.0f} s to run, over the {left:.0f} s left "
                            f"of the time budget")
            record.estimated_seconds_per_step = law.predict(tokens) / last.steps
            return record
    memory_model = _series_model(series) if len(series) >= 2 else None
    record, wall = run_point(spec, memory_limit, probe_seconds, memory_model)
    if record.measured:
        series.append((record, wall))
    return record
