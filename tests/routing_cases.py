"""Inputs for the routing-op tests: packed sequences whose boundaries are known by construction,
and the backends each op can be tested on here."""

import pytest
import torch

from helpers import HAS_CUDA, INTERPRET, TRITON_DEVICE, random_cu_seqlens
from mmhnet.ops import routing
from mmhnet.ops._backend import native_module, triton_available

# name -> (sequence lengths, dim, how q and k relate)
#   random:     q, k independent (some boundaries)
#   opposite:   q_t = -k_{t-1}: cos = -1, p = 1, every token a boundary
#   same:       q_t = k_{t-1}: cos = 1, p = 0, boundaries only at the sequence starts
#   orthogonal: one-hot q_t, k_{t-1} on different axes: cos = 0 exactly, p = 0.5, a tie (no
#               boundary)
CASES = {
    "random": ([5, 0, 7, 1, 12], 37, "random"),
    "length1": ([1, 1, 1, 1, 1], 6, "random"),
    "all_boundaries": ([6, 3, 9], 20, "opposite"),
    "starts_only": ([6, 1, 9], 20, "same"),
    "ties": ([5, 4], 12, "orthogonal"),
}


def make_case(name, device="cpu"):
    """float64 q, k, x (T, dim) and int32 cu_seqlens for one of CASES."""
    return make_packed(*CASES[name], device=device)


def make_packed(lengths, dim, kind, device="cpu"):
    """float64 q, k, x (T, dim) and int32 cu_seqlens: sequences of ``lengths`` packed, q and k
    related as ``kind`` says (see CASES)."""
    total = sum(lengths)
    kw = dict(dtype=torch.float64, device=device)
    k = torch.randn(total, dim, **kw)
    if kind == "random":
        q = torch.randn(total, dim, **kw)
    elif kind in ("opposite", "same"):
        scale = torch.rand(total, 1, **kw) + 0.5
        prev = torch.cat([k[:1], k[:-1]])
        q = scale * (-prev if kind == "opposite" else prev)
    else:
        t = torch.arange(total, device=device)
        q = torch.nn.functional.one_hot((2 * t) % dim, dim).to(**kw)
        k = torch.nn.functional.one_hot((2 * t + 1) % dim, dim).to(**kw)
        q = q * (torch.rand(total, 1, **kw) + 0.5)
        k = k * (torch.rand(total, 1, **kw) + 0.5)
    x = torch.randn(total, dim, **kw)
    return q, k, x, random_cu_seqlens(lengths, device=device)


def backend_device(backend):
    return TRITON_DEVICE if backend == "triton" else ("cuda" if backend == "cuda" else "cpu")


def _available(op, backend):
    """None if ``backend`` can run ``op`` here, else the reason it cannot."""
    symbol = routing._OPS[op][1]
    if backend == "triton" and not (triton_available() and (HAS_CUDA or INTERPRET)):
        return "needs triton with a CUDA device or TRITON_INTERPRET=1"
    if backend == "cpu" and not hasattr(native_module("_C"), symbol):
        return f"mmhnet._C is not built with {symbol}"
    if backend == "cuda":
        if not HAS_CUDA:
            return "needs a CUDA device"
        if not hasattr(native_module("_C_cuda"), symbol):
            return f"mmhnet._C_cuda is not built with {symbol}"
    return None


def backend_params(op):
    """pytest params of every backend ``op`` implements, skipped (with the reason) where it
    cannot run here."""
    params = []
    for name in routing._OPS[op][0]:
        reason = _available(op, name)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def with_cpu_streamed(params):
    """``params`` and, for each on the cpu backend, the same case again with every output
    written by streaming stores (the kernels' path for outputs larger than the cache)."""
    out = []
    for param in params:
        out.append(param)
        if param.values[0] == "cpu":
            out.append(pytest.param(*param.values, marks=[*param.marks, pytest.mark.cpu_streamed],
                                    id=f"{param.id}-streamed"))
    return out


# The input dtypes each backend is tested with; float64 references are computed from the same
# (rounded) inputs, so the tolerance measures the kernel's own error.
DTYPES = {
    "reference": (torch.float64, torch.float32),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
    "cpu": (torch.float64, torch.float32, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
