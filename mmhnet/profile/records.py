"""The profile record: one point (model, mode, duration) and what was measured or estimated.

JSON writes a list of these as dicts. Bytes are bytes, times are seconds. ``tokens`` are audio
latent frames of one clip (31.25 per second at 16 kHz). ``peak_bytes`` is the peak memory of the
point above the process's footprint after its imports (Python, torch, mmhnet): weights, gradients,
optimizer state, inputs and activations; ``absolute_peak_bytes`` adds that footprint back.
On CUDA the footprint is 0 and the peak is torch.cuda.max_memory_allocated.

Breakdown: ``weights_bytes``, ``grad_bytes`` and ``optimizer_bytes`` are counted from the tensors;
``held_bytes`` is what the process held above the footprint just before the run (weights,
optimizer state, caches the warm-up left); ``inputs_bytes`` is counted (features and latents);
``activation_bytes`` is measured: the run's peak up to the end of the model's forward call above
``held_bytes``, less the inputs — what a training step keeps for backward (and its transient
work buffers), before any gradient exists; for sampling, the step's peak less the inputs.

status: "measured"; "refused" (the estimated peak exceeds the memory limit, nothing was run past
the probes: ``peak_bytes`` is None and ``estimated_peak_bytes`` says why); "skipped" (not run:
its estimated time exceeds the time budget); "failed" (``message`` holds the error).
"""

import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

__all__ = ["ProfileRecord", "write_json", "read_json"]


@dataclass
class ProfileRecord:
    model: str
    mode: str
    seconds: float
    tokens: int
    peak_bytes: Optional[int]
    seconds_per_step: Optional[float]
    config: str = ""
    device: str = "cpu"
    batch: int = 1
    steps: int = 1
    checkpointing: bool = False
    status: str = "measured"
    message: str = ""
    params: int = 0
    weights_bytes: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    held_bytes: Optional[int] = None
    activation_bytes: Optional[int] = None
    inputs_bytes: int = 0
    runtime_bytes: int = 0
    absolute_peak_bytes: Optional[int] = None
    estimated_peak_bytes: Optional[int] = None
    memory_limit_bytes: Optional[int] = None
    fit_fixed_bytes: Optional[float] = None
    fit_bytes_per_token: Optional[float] = None
    seconds_total: Optional[float] = None
    estimated_seconds_per_step: Optional[float] = None
    meter: str = ""

    @property
    def measured(self):
        return self.status == "measured"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def write_json(records, path):
    with open(path, "w") as f:
        json.dump([r.to_dict() for r in records], f, indent=1)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return [ProfileRecord.from_dict(d) for d in json.load(f)]
