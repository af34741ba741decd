"""Profiling one point inside the current process; run it in a fresh process per point
(``python -m mmhnet.profile.worker REQUEST_JSON`` prints the record as JSON on its last line).

In order: the footprint after the imports; the model (and for training its optimizer); a warm-up
run at the first probe duration (lazy initialisation, the optimizer state); the memory model of
the bytes a run's forward adds (handed in, fitted by the caller on longer runs of the same
series, or fitted here on probe runs at ``probe_seconds``); the estimate for the requested
duration (held + gradients + that forward), refused if over the limit; else one run at that
duration, measuring its peak memory and time.
Between runs the inputs and gradients are dropped and freed memory handed back, so each run
starts from the weights and the optimizer state.
"""

import json
import sys
import time
from dataclasses import asdict
from typing import NamedTuple

from .estimate import PROBE_SECONDS, LinearMemoryModel, format_bytes
from .meter import make_meter
from .records import ProfileRecord
from .workloads import Workload, WorkloadSpec, input_bytes

__all__ = ["LIMIT_FRACTION", "ESTIMATE_MARGIN", "RunMeasurement",
           "profile_point", "measure_run"]

LIMIT_FRACTION = 0.9   # default limit: this share of the memory available when the point starts
ESTIMATE_MARGIN = 1.25  # refused when held + gradients + this x the predicted forward > the limit


class RunMeasurement(NamedTuple):
    """added: the run's peak above what was held before it (bytes); forward_added: the same
    peak up to the end of the model's forward call (the activations a training step keeps for
    backward, before its gradients exist; equal to ``added`` when ``forward`` is not called,
    as in sampling); seconds: wall time of the run; steps: steps it took."""
    added: int
    forward_added: int
    seconds: float
    steps: int


def measure_run(meter, workload, seconds):
    """One run of the workload at ``seconds`` (RunMeasurement)."""
    meter.release()
    before = meter.current()
    meter.reset_peak()
    forward_peaks = []
    hook = workload.model.register_forward_hook(lambda *_: forward_peaks.append(meter.peak()))
    try:
        workload.prepare(seconds)
        meter.synchronize()
        start = time.perf_counter()
        steps = workload.run()
        meter.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        hook.remove()
    peak = meter.peak()
    workload.clear()
    meter.release()
    forward_peak = forward_peaks[-1] if forward_peaks else peak
    return RunMeasurement(peak - before, forward_peak - before, elapsed, steps)


def _memory_model(meter, workload, tokens, probe_seconds, memory_model):
    """The fitted model of the bytes a run's forward adds (activations and inputs; the whole
    run for sampling) and where it comes from, or (None, '') when the requested duration is no
    longer than the probes (it needs no estimate)."""
    if memory_model is not None:
        return memory_model, "fitted on the two longest runs measured before"
    if tokens <= max(workload.tokens(s) for s in probe_seconds):
        return None, ""
    points = [(workload.tokens(s), measure_run(meter, workload, s).forward_added)
              for s in probe_seconds]
    return LinearMemoryModel.fit(points), f"fitted on probe runs at {probe_seconds} s"


def _refusal(record, fit, fit_source, limit_source):
    return (f"refused: {record.model} {record.mode} at {record.seconds:g} s ({record.tokens} audio "
            f"frames, batch {record.batch}) would need about "
            f"{format_bytes(record.estimated_peak_bytes)} (what the process holds and the "
            f"gradients, plus a forward pass of {fit.describe()} {fit_source}); with a "
            f"{ESTIMATE_MARGIN - 1:.0%} margin on the forward that is more than the "
            f"{format_bytes(record.memory_limit_bytes)} "
            f"{limit_source}. Use a shorter duration"
            + ("" if record.checkpointing or record.mode != "train_step" else ", --checkpointing")
            + " or a machine with more memory.")


def profile_point(spec: WorkloadSpec, memory_limit=None, probe_seconds=PROBE_SECONDS,
                  memory_model=None):
    """Profile one point in this process. memory_limit: the most bytes the process (CPU) or the
    allocator (CUDA) may hold at the peak; default LIMIT_FRACTION of what is available now on
    top of what is held. memory_model: a LinearMemoryModel of the bytes a run's forward adds,
    or None to fit one on probe runs. Returns a ProfileRecord (status "measured" or "refused")."""
    meter = make_meter(spec.device)
    meter.release()
    runtime = meter.current()
    workload = Workload(spec)
    record = ProfileRecord(
        model=spec.model, mode=spec.mode, seconds=spec.seconds,
        tokens=workload.tokens(spec.seconds), peak_bytes=None, seconds_per_step=None,
        config=spec.config, device=spec.device, batch=spec.batch,
        steps=spec.steps if spec.mode == "sample" else 1, checkpointing=spec.checkpointing,
        params=sum(p.numel() for p in workload.model.parameters()),
        inputs_bytes=input_bytes(workload.config, spec.seconds, spec.batch),
        runtime_bytes=runtime, meter=meter.kind)

    measure_run(meter, workload, probe_seconds[0])  # warm-up
    fit, fit_source = _memory_model(meter, workload, record.tokens, probe_seconds, memory_model)
    held = meter.current()
    record.weights_bytes, record.grad_bytes, record.optimizer_bytes = workload.state_bytes()
    record.held_bytes = int(held - runtime)
    if fit is not None:
        if memory_limit is None:
            limit, limit_source = held + LIMIT_FRACTION * meter.available(), (
                f"this point may use ({LIMIT_FRACTION:.0%} of the memory available when it "
                f"started)")
        else:
            limit, limit_source = memory_limit, "allowed by the memory limit"
        record.fit_fixed_bytes, record.fit_bytes_per_token = fit.fixed, fit.per_token
        predicted = fit.predict(record.tokens)
        held_and_grads = held - runtime + record.grad_bytes
        record.estimated_peak_bytes = int(held_and_grads + predicted)
        record.memory_limit_bytes = int(limit - runtime)
        if held_and_grads + ESTIMATE_MARGIN * predicted > record.memory_limit_bytes:
            record.status = "refused"
            record.message = _refusal(record, fit, fit_source, limit_source)
            return record

    run = measure_run(meter, workload, spec.seconds)
    record.peak_bytes = int(held - runtime + run.added)
    record.absolute_peak_bytes = int(held + run.added)
    record.activation_bytes = max(int(run.forward_added - record.inputs_bytes), 0)
    record.seconds_total = run.seconds
    record.seconds_per_step = run.seconds / run.steps
    return record


def main(argv):
    request = json.loads(argv[0])
    spec = WorkloadSpec(**request["spec"])
    model = request.get("memory_model")
    try:
        record = profile_point(spec, request.get("memory_limit"),
                               tuple(request.get("probe_seconds", PROBE_SECONDS)),
                               LinearMemoryModel(**model) if model else None)
    except Exception as exc:  # reported to the parent as a failed point, with the reason
        record = ProfileRecord(model=spec.model, mode=spec.mode, seconds=spec.seconds, tokens=0,
                               peak_bytes=None, seconds_per_step=None, config=spec.config,
                               device=spec.device, batch=spec.batch,
                               checkpointing=spec.checkpointing, status="failed",
                               message=f"{type(exc).__name__}: {exc}")
    print(json.dumps(asdict(record)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
