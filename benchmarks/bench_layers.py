"""Layer benchmarks (issue 5): BiMamba2 against attention of the same width, forward+backward.

Two tables:

* time and peak memory of forward+backward at 250, 1875 and 9375 tokens (8 s, 60 s and 5 min
  of audio at 31.25 Hz), batch 1, d_model 512, for the mixers alone (BiMamba2: headdim 64,
  d_state 128, expand 2; attention: 8 heads of 64 with QKV / output projections and
  scaled_dot_product_attention, non-causal) and for whole pre-norm blocks with the same SwiGLU
  MLP (an "M" block vs a transformer block). Peak memory is, on CPU, the high-water mark of the
  resident set of a fresh subprocess during one forward+backward, minus its resident set just
  before (glibc told to return freed blocks at once); on CUDA, torch.cuda.max_memory_allocated
  minus the memory allocated before.
* BiMamba2's activation memory per token (the bytes autograd keeps for backward, measured with
  saved-tensor hooks, parameters excluded) against the floor: what backward must keep, counted
  analytically (listed in the table's note). The measurement needs a kernel backend of the scan
  (the "reference" backend is plain torch autograd and keeps its own intermediates): on CPU
  "cpu" when mmhnet._C provides the scan, else "triton" under the interpreter, on few tokens
  (per-token memory does not depend on the length).

    python -m benchmarks.run --only layers
"""

import json
import os
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmhnet.layers import BiMamba2, Block, SwiGLU
from mmhnet.ops._backend import native_module, resolve_backend

from .common import Table, fmt_ms, time_fn

D_MODEL, HEADDIM, D_STATE, ATTN_HEADS = 512, 64, 128, 8
TOKENS = (250, 1875, 9375)
MODELS = ("BiMamba2", "SDPA attention", "M block (BiMamba2 + MLP)", "T block (SDPA + MLP)")
ACTIVATION_TOKENS = 64


class AttentionMixer(nn.Module):
    """Non-causal multi-head self-attention through F.scaled_dot_product_attention:
    (batch, seqlen, d_model) -> same."""

    def __init__(self, d_model, nheads):
        super().__init__()
        self.nheads = nheads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, cu_seqlens=None, mask=None):
        b, L, d = x.shape
        q, k, v = self.qkv(x).view(b, L, 3, self.nheads, d // self.nheads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, L, d))


def make_model(name, d_model=D_MODEL, backend=None):
    if name == "BiMamba2":
        return BiMamba2(d_model, d_state=D_STATE, headdim=HEADDIM, backend=backend)
    if name == "SDPA attention":
        return AttentionMixer(d_model, ATTN_HEADS)
    if name.startswith("M block"):
        return Block(d_model, make_model("BiMamba2", d_model, backend), SwiGLU(d_model))
    if name.startswith("T block"):
        return Block(d_model, make_model("SDPA attention", d_model), SwiGLU(d_model))
    raise ValueError(f"unknown model {name!r}")


def fwd_bwd_step(model, x):
    def step():
        model(x).sum().backward()
    return step


# ----------------------------------------------------------------------------------------------
# peak memory
# ----------------------------------------------------------------------------------------------

def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(name, tokens, d_model):
    """In a fresh process: peak resident-set growth of one forward+backward, in bytes."""
    torch.manual_seed(0)
    model = make_model(name, d_model)
    x = torch.randn(1, tokens, d_model, requires_grad=True)
    fwd_bwd_step(model, x)()  # warm-up: thread pools, lazy initialisation
    model.zero_grad(set_to_none=True)
    x.grad = None
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    fwd_bwd_step(model, x)()
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory(name, tokens, device, d_model=D_MODEL):
    if device.type == "cuda":
        model = make_model(name, d_model).to(device)
        x = torch.randn(1, tokens, d_model, device=device, requires_grad=True)
        fwd_bwd_step(model, x)()
        model.zero_grad(set_to_none=True)
        x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd_step(model, x)()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_layers", "peak", name,
                          str(tokens), str(d_model)], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed for {name} at {tokens} tokens:\n"
                           f"{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


# ----------------------------------------------------------------------------------------------
# activation memory per token
# ----------------------------------------------------------------------------------------------

def saved_activation_bytes(model, x):
    """Bytes of the distinct storages autograd saves for backward in model(x), parameters
    excluded (the input counts: in_proj needs it)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            sizes[storage.data_ptr()] = max(sizes.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.sum().backward()
    return sum(sizes.values())


def floor_breakdown(m, elem=4):
    """What BiMamba2's backward must keep per token without recomputing a matmul or the scan,
    as (name, bytes): the layer input (in_proj's weight gradient), the in_proj output (conv
    input, gate z, dt), the scan output y (the gated norm's backward and out_proj's weight
    gradient) and the norm's inverse RMS per group. The conv output and the normalised y are
    recomputable elementwise, as mamba_ssm's fused Mamba2 path does."""
    d_in_proj = m.in_proj.out_features
    return [("layer input u", m.d_model * elem), ("in_proj output (x, B, C, z, dt)", d_in_proj * elem),
            ("scan output y", m.d_ssm * elem), ("inverse RMS", m.ngroups * 4)]


def activation_backend(device):
    if device.type == "cuda":
        return None
    mod = native_module("_C")
    return "cpu" if mod is not None and hasattr(mod, "bi_scan_fwd") else "triton"


def _activation_child(backend, tokens, d_model):
    torch.manual_seed(0)
    model = make_model("BiMamba2", d_model, backend)
    x = torch.randn(1, tokens, d_model, requires_grad=True)
    return saved_activation_bytes(model, x) / tokens


def activation_per_token(device, d_model=D_MODEL, tokens=ACTIVATION_TOKENS):
    backend = activation_backend(device)
    if device.type == "cuda":
        model = make_model("BiMamba2", d_model).to(device)
        x = torch.randn(1, 1024, d_model, device=device, requires_grad=True)
        return (saved_activation_bytes(model, x) / 1024,
                resolve_backend(None, device, "bi_selective_scan", "bi_scan_fwd"))
    env = dict(os.environ, TRITON_INTERPRET="1") if backend == "triton" else dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_layers", "activation", backend,
                          str(tokens), str(d_model)], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"activation subprocess failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes_per_token"], backend


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def run(device="cpu", quick=False):
    device = torch.device(device)
    d_model = 256 if quick else D_MODEL
    tokens = TOKENS[:2] if quick else TOKENS
    scan_backend = resolve_backend(None, device, "bi_selective_scan", "bi_scan_fwd")
    timing = Table(
        f"BiMamba2 vs SDPA attention, forward+backward, d_model {d_model}, batch 1, float32, "
        f"{device.type}",
        ["tokens", "model", "fwd+bwd ms", "peak MiB", "peak KiB / token", "time vs SDPA"],
        note=f"Scan backend: {scan_backend}. Attention: {ATTN_HEADS} heads, non-causal SDPA. "
             f"Blocks: pre-norm RMSNorm, mixer, RMSNorm, SwiGLU (8/3 d_model). Timings are "
             f"medians; on a shared machine they are noisy.")
    for L in tokens:
        x = torch.randn(1, L, d_model, device=device, requires_grad=True)
        times = {}
        for name in MODELS:
            torch.manual_seed(0)
            model = make_model(name, d_model).to(device)
            reps = 2 if L >= 9375 else 5
            times[name] = time_fn(fwd_bwd_step(model, x), device, warmup=1, reps=reps)
            del model
        for name in MODELS:
            peak = peak_memory(name, L, device, d_model)
            partner = "SDPA attention" if name in MODELS[:2] else MODELS[3]
            timing.add(L, name, fmt_ms(times[name]), f"{peak / 2**20:.1f}",
                       f"{peak / L / 1024:.1f}", f"{times[name] / times[partner]:.2f}x")

    measured, backend = activation_per_token(device, d_model)
    floor = floor_breakdown(make_model("BiMamba2", d_model))
    floor_total = sum(b for _, b in floor)
    listing = "; ".join(f"{name} {b} B" for name, b in floor)
    activation = Table(
        f"BiMamba2 activation memory per token, d_model {d_model}, float32",
        ["kept for backward B/token", "floor B/token", "kept / floor"],
        note=f"Measured with saved-tensor hooks (scan backend {backend}). Floor = {listing}. The "
             f"excess over the floor is the conv output (x, B, C after the conv), which the scan "
             f"op saves as its inputs; a scan op that took the conv's input and weights could "
             f"recompute it.")
    activation.add(f"{measured:.0f}", f"{floor_total}", f"{measured / floor_total:.2f}")
    return [timing, activation]


def _main(argv):
    mode, *rest = argv
    if mode == "peak":
        name, tokens, d_model = rest[0], int(rest[1]), int(rest[2])
        print(json.dumps({"peak_bytes": _peak_child(name, tokens, d_model)}))
    elif mode == "activation":
        backend, tokens, d_model = rest[0], int(rest[1]), int(rest[2])
        print(json.dumps({"bytes_per_token": _activation_child(backend, tokens, d_model)}))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
