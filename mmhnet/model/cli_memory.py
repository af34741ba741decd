"""The memory a ``train`` or ``generate`` run will need, estimated from the config and the clip
length before anything is allocated, and the refusal of a run that would not fit.

    estimate = run_memory(config, "mmhnet", counts, batch=1, training=False, passes=2)
    check_fits(estimate, memory_limit("cpu"), "generating 1e+05 s")      # CliError if over

The estimate is a count, not a measurement: weights (and for training their gradients and
AdamW's two moments) from the parameter count on the meta device; the inputs (float32 features
and latents, times the CFG passes); activations of ``SAMPLE_FLOATS`` / ``ACTIVATION_FLOATS``
floats of width d_model per audio frame (and block, for training; the blocks weighted by the
tokens they see), plus, for training, ``INPUT_ACTIVATIONS`` times the inputs (the conditioning
layers keep copies of the wide features for backward); and ``RUNTIME_BYTES`` that a first run
allocates once (thread pools, kernels). The coefficients are fitted with a margin to measured
runs: docs/profile.md's config S (sampling 128 KiB per audio frame measured, estimate 140;
training 930 KiB, MMHNet, estimate 1020; 1442 KiB, baseline, estimate 1540) and, for tiny, peak
resident sets of ``mmhnet generate`` at 60 and 240 s (0.69 MiB per second of clip, estimate
0.82) and ``mmhnet train`` on 4 clips of 8 and 32 s (6.2 MiB per second, estimate 6.4) on
the development VM (AMD EPYC, AVX2, 2 vCPUs shared, 2026-12-07).
"""

import os
from dataclasses import dataclass

import torch

from .build import MODEL_KINDS
from .checkpoint import CheckpointError, read_checkpoint
from .cli_common import CliError

__all__ = ["SAMPLE_FLOATS", "ACTIVATION_FLOATS", "INPUT_ACTIVATIONS", "RUNTIME_BYTES",
           "LIMIT_FRACTION", "MemoryEstimate",
           "model_parameters", "run_memory", "available_bytes", "memory_limit", "check_fits",
           "format_gib", "read_checkpoint_within"]

FLOAT_BYTES = 4
SAMPLE_FLOATS = 40                                       # per audio frame, pass and d_model
ACTIVATION_FLOATS = {"mmhnet": 28, "baseline": 36}       # per audio frame, block and d_model
RECOMPUTE_FLOATS = 30   # with --recompute: each block keeps its input, plus one block's forward
INPUT_ACTIVATIONS = 6   # training: activations kept per input float (the conditioning layers)
RUNTIME_BYTES = 256 * 2**20   # allocated once by a first run: thread pools, kernels, caches
UNTRAINED_CHUNKS_PER_FRAME = 0.5   # an untrained router cuts about every other frame
LIMIT_FRACTION = 0.9    # default limit: this share of the memory available now


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part; ``total`` is what the run is checked against."""
    weights: int
    training_state: int    # gradients and AdamW moments (0 for sampling)
    inputs: int
    activations: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self):
        return (self.weights + self.training_state + self.inputs + self.activations
                + self.runtime)

    def describe(self):
        return (f"{format_gib(self.total)} (weights {format_gib(self.weights)}, gradients and "
                f"optimizer {format_gib(self.training_state)}, inputs {format_gib(self.inputs)}, "
                f"activations {format_gib(self.activations)}, runtime "
                f"{format_gib(self.runtime)})")


def format_gib(n):
    """1.5 * 2**30 -> '1.5 GiB'; under 1 GiB in MiB."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def model_parameters(config, kind):
    """Parameter count of the model a config builds, counted on the meta device (nothing is
    allocated, so a config asking for a huge model is counted, not built)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MODEL_KINDS[kind](config).parameters())


def _block_weight(config, kind, counts):
    """Blocks weighted by the tokens each sees per audio frame."""
    video_per_frame = counts.visual / counts.audio
    if kind == "baseline":
        joint_per_frame = 1 + video_per_frame + config.text_tokens / counts.audio
        return config.baseline_joint_depth * joint_per_frame + config.baseline_fused_depth
    chunks = UNTRAINED_CHUNKS_PER_FRAME
    return (config.encoder_depth + config.decoder_depth
            + config.multimodal_depth * (chunks + video_per_frame)
            + config.audio_depth * chunks)


def run_memory(config, kind, counts, *, batch, training, passes=1, recompute=False,
               parameters=None):
    """MemoryEstimate of a training step (``training``) or of sampling (``passes`` = 2 with
    classifier-free guidance) on ``batch`` clips of FrameCounts ``counts``."""
    params = model_parameters(config, kind) if parameters is None else parameters
    per_clip_inputs = (counts.visual * config.visual_dim + counts.sync * config.sync_dim
                       + config.text_tokens * config.text_dim + counts.audio * config.latent_dim)
    frames = batch * counts.audio
    if training:
        blocks = _block_weight(config, kind, counts)
        per_frame = (2 * blocks + RECOMPUTE_FLOATS if recompute
                     else ACTIVATION_FLOATS[kind] * blocks)
        inputs = batch * per_clip_inputs
        activations = frames * config.d_model * per_frame + INPUT_ACTIVATIONS * inputs
    else:
        activations = passes * frames * config.d_model * SAMPLE_FLOATS
        inputs = passes * batch * per_clip_inputs
    return MemoryEstimate(weights=FLOAT_BYTES * params,
                          training_state=3 * FLOAT_BYTES * params if training else 0,
                          inputs=FLOAT_BYTES * int(inputs),
                          activations=FLOAT_BYTES * int(activations))


def available_bytes(device):
    """Memory a run on ``device`` can still get: MemAvailable (Linux) for CPU, free plus cached
    device memory for CUDA; None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_limit(device, limit_gib=None):
    """(bytes or None, description): ``limit_gib`` when given, else LIMIT_FRACTION of what is
    available on the device now (None where that cannot be read: no check)."""
    if limit_gib is not None:
        return int(limit_gib * 2**30), "--memory-limit-gib"
    available = available_bytes(device)
    if available is None:
        return None, "unknown"
    return int(LIMIT_FRACTION * available), (f"{LIMIT_FRACTION:.0%} of the memory available "
                                             f"on {device}")


def check_fits(estimate, limit, what):
    """Raise CliError naming the estimate and the limit when ``estimate`` exceeds it.
    limit: (bytes or None, description) from memory_limit."""
    limit_bytes, source = limit
    if limit_bytes is not None and estimate.total > limit_bytes:
        raise CliError(f"refused: {what} would need about {estimate.describe()}, more than the "
                       f"{format_gib(limit_bytes)} allowed ({source}); use a shorter duration, a "
                       f"smaller batch or model, or --memory-limit-gib if the estimate is wrong")


def read_checkpoint_within(path, limit):
    """read_checkpoint (checkpoint.py), refused with a CliError when the file is larger than the
    memory limit (before it is read) or when the model its config asks for would not fit
    (counted on the meta device, before it is built). Returns (state, ModelConfig)."""
    limit_bytes, source = limit
    if limit_bytes is not None and os.path.isfile(path) and os.path.getsize(path) > limit_bytes:
        raise CliError(f"refused: checkpoint {path} is {format_gib(os.path.getsize(path))}, "
                       f"more than the {format_gib(limit_bytes)} allowed ({source})")
    state, config = read_checkpoint(path)
    try:
        params = model_parameters(config, state["kind"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config: {exc}") from None
    weights = MemoryEstimate(weights=FLOAT_BYTES * params, training_state=0, inputs=0,
                             activations=0)
    check_fits(weights, limit, f"the model of checkpoint {path} ({params / 1e6:.1f}M "
                               f"parameters)")
    return state, config
