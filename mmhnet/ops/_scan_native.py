"""The "cpu" and "cuda" backends of the scans: hand-written kernels behind torch-free pybind11
modules, ``mmhnet._C`` (C++17, OpenMP) and ``mmhnet._C_cuda`` (CUDA).

Design (details and maths: csrc/scan_params.h):

* One call = ``bi_scan_fwd`` / ``bi_scan_bwd`` with the storage dtype, the sizes, a dict
  ``{name: (data_ptr, strides)}`` and the flags (plus the CUDA stream). No torch headers are
  compiled in, so the modules survive torch upgrades. Inputs are passed with their strides
  (slices of a projection output need no copy); outputs are allocated here with
  ``mmhnet._alloc.empty`` (NaN-poisoned under the test suite).
* Every pass, forward and backward, is one "rank-1 scan" over a P x N state per head. The CPU
  kernel keeps a tile of 16 state columns in vector registers across the steps of a block and
  stores the state divided by the running decay, so a step costs two FMAs per state element.
  OpenMP runs units of adjacent heads of one sequence block by block (page-friendly rows of
  (b, l, h, p) tensors, B/C rows and decays shared by the heads and both directions), both
  directions inside a unit. The backward stores no states, it recomputes: three scans per
  direction give dC, dB and dx, and the decay gradient follows from dB and dC by a reverse
  cumulative sum. The CUDA kernels run the same passes, one thread per state row.
* Results do not depend on the thread count: each unit writes its own outputs, and the few
  cross-unit sums (dA, dD, dt_bias, dB/dC over the heads of a group) are reduced here by torch.
* Dtypes: compute is float32 (float64 for float64 inputs). The CPU kernels take float32 and
  float64, so float16/bfloat16 inputs are upcast here and the outputs cast back; the CUDA
  kernels read float32, float16, bfloat16 and float64 directly.
"""

import torch

from .. import _alloc
from ._backend import BackendUnavailableError, native_module
from .scan import BOTH, REVERSE, ScanGrads

_REV = ("dt", "A", "B", "C")
# CUDA: one thread per state row keeps the other dimension in registers (csrc/cuda).
CUDA_MAX_DIM = 256


def _backend_of(x):
    return "cuda" if x.device.type == "cuda" else "cpu"


def _module(backend):
    mod = native_module("_C_cuda" if backend == "cuda" else "_C")
    if mod is None or not hasattr(mod, "bi_scan_fwd"):
        raise BackendUnavailableError(f"bi_selective_scan: backend {backend!r} needs "
                                      f"mmhnet.{'_C_cuda' if backend == 'cuda' else '_C'} built")
    return mod


def _dtypes(x, backend):
    """(storage dtype of the big tensors, compute dtype)."""
    if x.dtype == torch.float64:
        return torch.float64, torch.float64
    if backend == "cpu" or x.dtype == torch.float32:
        return torch.float32, torch.float32
    return x.dtype, torch.float32


def _check_sizes(a, backend):
    if backend == "cuda":
        p, n = a.x.shape[3], a.B.shape[3]
        if p > CUDA_MAX_DIM or n > CUDA_MAX_DIM:
            raise BackendUnavailableError(
                f"bi_selective_scan: backend 'cuda' supports headdim and dstate up to "
                f"{CUDA_MAX_DIM}; got headdim {p}, dstate {n}")


def _canonical(a):
    """One direction reads the forward parameter slots; reverse-only calls move the reverse
    parameters there. Returns (args, mapping of kernel slot -> original name)."""
    if a.directions == BOTH:
        return a, {}
    rev = {n: getattr(a, n + "_rev") for n in _REV}
    moved = {}
    if a.directions == REVERSE:
        moved = {n: n + "_rev" for n in _REV if rev[n] is not None}
    fields = {n: rev[n] for n in moved}
    fields.update({n + "_rev": None for n in _REV})
    return a._replace(**fields), moved


class _Call:
    """The storage-dtype copies of the inputs and the argument dict of one native call."""

    def __init__(self, a, backend):
        self.backend = backend
        self.store, self.cd = _dtypes(a.x, backend)
        big = {"x", "z", "B", "C", "B_rev", "C_rev"}
        self.inputs = {}
        for name in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_rev", "A_rev", "B_rev", "C_rev"):
            t = getattr(a, name)
            if t is not None:
                self.inputs[name] = t.to(self.store if name in big else self.cd)
        b, l, h, p = a.x.shape
        self.nseq = 1 if a.cu_seqlens is None else a.cu_seqlens.numel() - 1
        self.sizes = (b, l, h, p, a.B.shape[2], a.B.shape[3], self.nseq)
        self._placeholder = None
        self.tensors = {}
        self.add(self.inputs)
        if a.cu_seqlens is not None:
            self.cu_seqlens = a.cu_seqlens.to(torch.int32).contiguous()
            self.add({"cu_seqlens": self.cu_seqlens})
        self.flags = (bool(a.dt_softplus), int(a.directions), bool(a.quasi))
        self.scratch = []
        self.ndirs = 2 if a.directions == BOTH else 1
        self.numel = a.x.numel()

    def empty(self, shape, dtype=None):
        return _alloc.empty(tuple(shape), dtype or self.cd, self.inputs["x"].device)

    def workspace(self, name, numel, zeroed=False):
        """CUDA scratch (flat, compute dtype), kept alive by this call object."""
        make = torch.zeros if zeroed else torch.empty
        t = make(numel, dtype=self.cd, device=self.inputs["x"].device)
        self.scratch.append(t)
        self.add({name: t})

    def add(self, tensors):
        """Pass tensors to the kernel as (data_ptr, strides). An empty tensor (dstate 0) may have
        no storage; the kernels never read it, but it must not look absent."""
        for name, t in tensors.items():
            ptr = t.data_ptr()
            if t.numel() == 0:
                if self._placeholder is None:
                    self._placeholder = torch.empty(1, device=t.device)
                ptr = self._placeholder.data_ptr()
            self.tensors[name] = (ptr, tuple(t.stride()))

    def run(self, fn_name):
        fn = getattr(_module(self.backend), fn_name)
        dtype = str(self.store).replace("torch.", "")
        x = self.inputs["x"]
        if self.backend == "cuda":
            with torch.cuda.device(x.device):
                stream = torch.cuda.current_stream(x.device).cuda_stream
                fn(dtype, self.sizes, self.tensors, *self.flags, stream)
        else:
            fn(dtype, self.sizes, self.tensors, *self.flags)


def forward(a):
    """y of the scan (ScanArgs -> tensor like x)."""
    backend = _backend_of(a.x)
    _check_sizes(a, backend)
    a, _ = _canonical(a)
    call = _Call(a, backend)
    y = call.empty(a.x.shape, call.store)
    call.add({"y": y})
    if backend == "cuda":
        call.workspace("ws_yhat", call.ndirs * call.numel)
    call.run("bi_scan_fwd")
    return y.to(a.x.dtype)


def backward(dy, a):
    """Gradients of sum(y * dy) for every tensor input of ``a`` (ScanGrads)."""
    backend = _backend_of(a.x)
    _check_sizes(a, backend)
    original = a
    a, moved = _canonical(a)
    call = _Call(a, backend)
    b, l, h, p = a.x.shape
    g, n = a.B.shape[2], a.B.shape[3]
    rows = b * call.nseq
    dy = dy.to(call.store)
    out = {
        "dx": call.empty(a.x.shape, call.store),
        "ddt": call.empty(a.dt.shape),
        "dA_part": call.empty((rows, h)),
        "dB_heads": call.empty((b, l, h, n)),
        "dC_heads": call.empty((b, l, h, n)),
    }
    if a.D is not None:
        out["dD_part"] = call.empty((rows, h, p))
    if a.z is not None:
        out["dz"] = call.empty(a.x.shape, call.store)
    for name, grad, shape in (("dt_rev", "ddt_rev", a.dt.shape), ("A_rev", "dA_rev_part", (rows, h)),
                              ("B_rev", "dB_rev_heads", (b, l, h, n)),
                              ("C_rev", "dC_rev_heads", (b, l, h, n))):
        if getattr(a, name) is not None:
            out[grad] = call.empty(shape)
    call.add(dict(out, dy=dy))
    if backend == "cuda":
        if a.z is not None:
            call.workspace("ws_yhat", call.ndirs * call.numel)
        call.workspace("ws_gyp", call.numel)
        call.workspace("ws_dlog", call.ndirs * b * l * h, zeroed=n == 0)
        call.workspace("ws_xgu", call.ndirs * b * l * h)
        anchor_state, anchor_glog = _module(backend).bi_scan_anchor_numel(b, l, h, p, n, call.ndirs)
        call.workspace("ws_anchor_state", anchor_state)
        call.workspace("ws_anchor_glog", anchor_glog)
        if call.store != call.cd:
            call.workspace("ws_dx", call.numel)
    call.run("bi_scan_bwd")

    def heads_to_groups(t):
        return t if g == h else t.view(b, l, g, h // g, n).sum(3)

    grads = {
        "x": out["dx"], "dt": out["ddt"], "A": out["dA_part"].sum(0),
        "B": heads_to_groups(out["dB_heads"]), "C": heads_to_groups(out["dC_heads"]),
        "z": out.get("dz"),
    }
    if a.D is not None:
        dD = out["dD_part"].sum(0)
        grads["D"] = dD if a.D.dim() == 2 else dD.sum(-1)
    if a.dt_bias is not None:
        dbias = out["ddt"].sum((0, 1))
        grads["dt_bias"] = dbias + out["ddt_rev"].sum((0, 1)) if "ddt_rev" in out else dbias
    for name, grad in (("dt", "ddt_rev"), ("B", "dB_rev_heads"), ("C", "dC_rev_heads")):
        if grad in out:
            t = out[grad]
            grads[name + "_rev"] = t if name == "dt" else heads_to_groups(t)
    if "dA_rev_part" in out:
        grads["A_rev"] = out["dA_rev_part"].sum(0)
    for slot, name in moved.items():  # reverse-only call: the reverse parameters were moved
        grads[name] = grads[slot]
        grads[slot] = torch.zeros_like(getattr(original, slot))
    return ScanGrads(*[None if getattr(original, name) is None
                       else _unused_zero(grads.get(name), getattr(original, name))
                       for name in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias",
                                    "dt_rev", "A_rev", "B_rev", "C_rev")])


def _unused_zero(grad, like):
    """A present input the call does not read (a reverse parameter of a one-direction call)."""
    return torch.zeros_like(like) if grad is None else grad

