"""The 5-minute profile (issue 7) for ``make bench``: memory and time of long clips, MMHNet
beside its same-size attention baseline, and where the activation memory goes.

Tables:

* layer level: the activation bytes per token BiMamba2 and DynamicChunking keep for backward
  (saved-tensor hooks, bench_layers.saved_activation_bytes), against the floor of what backward
  must keep (bench_layers.floor_breakdown for BiMamba2; ``chunking_floor_breakdown`` here), at
  the S config's width and mixer options;
* the model profile (``mmhnet.profile``, each point in a fresh process), config S (tiny with
  --quick): one sampling step at 8, 30, 60, 120 and 300 s and a training step at 8, 60 and
  300 s, MMHNet beside the attention baseline; MMHNet's training step with checkpointing
  (recompute) beside them;
* the measured effect of checkpointing on the training step.

On 2 CPU cores a 300 s point of the S config takes minutes, so the sweep has a time budget
(``MMHNET_BENCH_PROFILE_BUDGET`` seconds, default 900, a third per table; the first point of
each series always runs): a point whose time, extrapolated from the shorter points of its
series, would run past the budget is listed as skipped, with its estimated peak.
``mmhnet profile`` without a budget measures every point.

    python -m benchmarks.run --only profile
"""

import json
import os
import subprocess
import sys

import torch
import torch.nn as nn

from mmhnet.layers import BiMamba2, DynamicChunking
from mmhnet.model.config import get_config
from mmhnet.profile import growth_ratios, profile, table_rows
from mmhnet.profile.report import MODEL_LABELS, TABLE_COLUMNS

from .bench_layers import activation_backend, floor_breakdown, saved_activation_bytes
from .common import Table

FULL = dict(config="S", inference=(8, 30, 60, 120, 300), training=(8, 60, 300))
QUICK = dict(config="tiny", inference=(8, 30), training=(8, 30))
LAYER_TOKENS = 512
DEFAULT_BUDGET = 900.0


# ----------------------------------------------------------------------------------------------
# layer level
# ----------------------------------------------------------------------------------------------

class ChunkRoundTrip(nn.Module):
    """DynamicChunking in and out with nothing between: (batch, seqlen, d) -> same; the
    routing of the last call is kept in ``routing``."""

    def __init__(self, d_model, backend=None):
        super().__init__()
        self.chunking = DynamicChunking(d_model, backend=backend)
        self.routing = None

    def forward(self, x):
        chunks, self.routing = self.chunking(x)
        return self.chunking.dechunk(chunks, self.routing)


def chunking_floor_breakdown(d_model, compression, elem=4):
    """What DynamicChunking's backward must keep per token without recomputing a matmul or the
    EMA scan, as (name, bytes): the input (q_proj / k_proj weight gradients), q and k (the
    cosine's backward), p, the boundary mask and the chunk index of each token, and per chunk
    (1 / compression of a token) the EMA's input and output (the rate's gradient needs both
    directions' states; input + output is the same count) and its rate."""
    return [("input x", d_model * elem), ("q, k", 2 * d_model * elem),
            ("p, mask, chunk id", 4 + 1 + 4),
            (f"per chunk / {compression:.2f}: EMA in + out, rate",
             (2 * d_model * elem + 4) / compression)]


def _layer_rows(backend, tokens, config_name):
    """[(layer, kept bytes per token, [(floor term, bytes)])] at the config's width."""
    cfg = get_config(config_name)
    torch.manual_seed(0)
    x = torch.randn(1, tokens, cfg.d_model, requires_grad=True)
    mixer = BiMamba2(cfg.d_model, **cfg.mixer_options(), backend=backend)
    rows = [("BiMamba2", saved_activation_bytes(mixer, x) / tokens, floor_breakdown(mixer))]
    chunking = ChunkRoundTrip(cfg.d_model, backend=backend)
    kept = saved_activation_bytes(chunking, x) / tokens
    compression = float(chunking.routing.compression)
    rows.append((f"DynamicChunking (in + out, {compression:.2f} tokens/chunk)", kept,
                 chunking_floor_breakdown(cfg.d_model, compression)))
    return rows


def layer_table(device, config_name):
    backend = activation_backend(device)
    if device.type == "cuda":
        rows = _layer_rows(backend, LAYER_TOKENS, config_name)
    else:  # a fresh process: the Triton interpreter must be set before Triton is imported
        env = dict(os.environ, TRITON_INTERPRET="1") if backend == "triton" else dict(os.environ)
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_profile", "layers", backend,
                              str(LAYER_TOKENS), config_name], env=env, capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if out.returncode != 0:
            raise RuntimeError(f"layer activation subprocess failed:\n{out.stderr[-2000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = get_config(config_name)
    table = Table(
        f"Activation memory per token kept for backward vs the floor, d_model {cfg.d_model} "
        f"(config {config_name}), float32",
        ["layer", "kept B/token", "floor B/token", "kept / floor", "floor terms"],
        note=f"Saved-tensor hooks (benchmarks/bench_layers.py), scan and routing backend "
             f"{backend}, {LAYER_TOKENS} tokens, random inputs (an untrained router cuts about "
             f"every other token; a trained one aims at config.target_ratio = "
             f"{cfg.target_ratio:g}). The floor keeps every matmul and scan output that "
             f"backward reads and recomputes only elementwise work.")
    for name, kept, floor in rows:
        total = sum(b for _, b in floor)
        table.add(name, f"{kept:.0f}", f"{total:.0f}", f"{kept / total:.2f}",
                  "; ".join(f"{term} {b:.0f}" for term, b in floor))
    return table


# ----------------------------------------------------------------------------------------------
# model level
# ----------------------------------------------------------------------------------------------

def _profile_table(title, records, note):
    table = Table(title, TABLE_COLUMNS, note=note)
    for row in table_rows(records):
        table.add(*row)
    return table


def _notes(records):
    lines = []
    for r in records:
        if not r.measured:
            lines.append(f"- {MODEL_LABELS[r.model]} {r.mode} {r.seconds:g} s: {r.message}")
    for (model, mode, ckpt), (peak, act) in sorted(growth_ratios(records).items()):
        label = f"{MODEL_LABELS[model]} {mode}{' (checkpointing)' if ckpt else ''}"
        lines.append(f"- {label}: peak at 300 s / peak at 30 s = {peak:.2f}; activations "
                     f"{act:.2f}")
    return "\n".join(lines)


def checkpointing_table(plain, recomputed):
    """The training step with and without checkpointing, where both were measured."""
    table = Table("Checkpointing (recompute every block in backward): effect on a training step",
                  ["model", "seconds", "activations", "activations (ckpt)", "saved", "peak",
                   "peak (ckpt)", "time (ckpt) / time"],
                  note="Activations: what the forward pass holds at its peak (before any "
                       "gradient exists) above the weights, optimizer state and inputs. Times: "
                       "one step each; on a shared machine the ratio is noise unless both ran "
                       "under the same load.")
    with_ckpt = {(r.model, r.seconds): r for r in recomputed if r.measured}
    for r in plain:
        c = with_ckpt.get((r.model, r.seconds))
        if not r.measured or c is None:
            continue
        table.add(MODEL_LABELS[r.model], f"{r.seconds:g}", f"{r.activation_bytes / 2**20:.0f} MiB",
                  f"{c.activation_bytes / 2**20:.0f} MiB",
                  f"{1 - c.activation_bytes / max(r.activation_bytes, 1):.0%}",
                  f"{r.peak_bytes / 2**30:.2f} GiB", f"{c.peak_bytes / 2**30:.2f} GiB",
                  f"{c.seconds_per_step / r.seconds_per_step:.2f}")
    return table


def run(device="cpu", quick=False):
    device = torch.device(device)
    plan = QUICK if quick else FULL
    config = plan["config"]
    budget = float(os.environ.get("MMHNET_BENCH_PROFILE_BUDGET", DEFAULT_BUDGET))
    sweep = dict(device=device.type, time_budget=None if quick else budget / 3)
    inference = profile(config, plan["inference"], ["sample_step"], **sweep)
    training = profile(config, plan["training"], ["train_step"], **sweep)
    recomputed = profile(config, plan["training"], ["train_step"], ["mmhnet"], checkpointing=True,
                         **sweep)
    note = (f"Peak: above the process footprint after imports; CPU: resident set of a fresh "
            f"process per point, CUDA: max_memory_allocated. Batch 1 clip; sampling runs the "
            f"conditional and the null pass together (classifier-free guidance). Time budget "
            f"{'none' if quick else f'{budget / 3:.0f} s per table'}.")
    return [layer_table(device, config),
            _profile_table(f"One sampling step, config {config}", inference,
                           "\n".join(filter(None, [note, _notes(inference)]))),
            _profile_table(f"One training step (AdamW), config {config}", training + recomputed,
                           "\n".join(filter(None, [note, _notes(training + recomputed)]))),
            checkpointing_table(training, recomputed)]


def _main(argv):
    mode, backend, tokens, config_name = argv
    if mode != "layers":
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(_layer_rows(backend, int(tokens), config_name)))


if __name__ == "__main__":
    _main(sys.argv[1:])
