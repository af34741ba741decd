"""Shared test utilities: relative errors, per-dtype tolerances, random scan inputs."""

import torch

# Relative-error tolerances ||out - ref|| / ||ref|| per input dtype, for outputs and gradients.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def rel_err(out, ref):
    out = out.detach().double()
    ref = ref.detach().double()
    denom = ref.norm()
    if denom == 0:
        return out.norm().item()
    return ((out - ref).norm() / denom).item()


def assert_close_rel(out, ref, tol, what=""):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def random_cu_seqlens(lengths, device="cpu"):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def make_scan_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, *, dtype=torch.float32,
                     device="cpu", D=None, z=False, dt_bias=False, rev=(), dt_softplus=True):
    """Random inputs for the scans. D: None | "h" | "hp". rev: names among dt, A, B, C that get a
    separate reverse-direction tensor. Returns a dict of keyword arguments (x, dt, A, B, C, ...)."""
    kw = dict(device=device, dtype=dtype)
    args = {
        "x": torch.randn(batch, seqlen, nheads, headdim, **kw),
        # dt around softplus^-1 of 0.05..0.5 when softplus is on, else positive directly
        "dt": (torch.randn(batch, seqlen, nheads, **kw) - 1.0) if dt_softplus
        else torch.rand(batch, seqlen, nheads, **kw) * 0.5 + 0.01,
        "A": -(torch.rand(nheads, **kw) * 2.0 + 0.1),
        "B": torch.randn(batch, seqlen, ngroups, dstate, **kw),
        "C": torch.randn(batch, seqlen, ngroups, dstate, **kw),
    }
    if D == "h":
        args["D"] = torch.randn(nheads, **kw)
    elif D == "hp":
        args["D"] = torch.randn(nheads, headdim, **kw)
    if z:
        args["z"] = torch.randn(batch, seqlen, nheads, headdim, **kw)
    if dt_bias:
        args["dt_bias"] = torch.randn(nheads, **kw) * 0.5
    for name in rev:
        base = args[name]
        if name == "A":
            args["A_rev"] = -(torch.rand(nheads, **kw) * 2.0 + 0.1)
        elif name == "dt":
            args["dt_rev"] = torch.randn_like(base) - 1.0 if dt_softplus else torch.rand_like(base) * 0.5 + 0.01
        else:
            args[name + "_rev"] = torch.randn_like(base)
    args["dt_softplus"] = dt_softplus
    return args


TENSOR_KEYS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_rev", "A_rev", "B_rev", "C_rev")


def clone_inputs(args, dtype=None, device=None, requires_grad=True):
    """Copy of the inputs (optionally cast/moved), float tensors as fresh leaves."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor) and k in TENSOR_KEYS:
            v = v.detach().to(dtype=dtype or v.dtype, device=device or v.device).clone()
            v.requires_grad_(requires_grad)
        elif isinstance(v, torch.Tensor):
            v = v.to(device=device or v.device)
        out[k] = v
    return out


def grads_of(out, args, dy):
    """Gradients of sum(out * dy) with respect to every tensor input in args."""
    names = [k for k in TENSOR_KEYS if k in args and args[k] is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], dy, allow_unused=True)
    return {k: g for k, g in zip(names, grads)}


import os  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The device the Triton backend runs on here: the GPU where there is one, else the CPU through
# the interpreter (set by conftest.py).
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def check_scan_against_reference(op_name, args, *, backend, dtype, device, tol=None, **op_kwargs):
    """Run mmhnet.ops.<op_name> on ``args`` cast to dtype/device with ``backend`` and compare the
    output and every gradient (scalar loss sum(y * dy), dy random) with the float64 sequential
    reference evaluated on the same (rounded) inputs."""
    import mmhnet.ops as ops
    from mmhnet.ops import reference as R

    ref_fn = {"selective_scan": R.selective_scan_sequential,
              "bi_selective_scan": R.bi_selective_scan_sequential}[op_name]
    low = clone_inputs(args, dtype=dtype, device=device)
    ref = clone_inputs(low, dtype=torch.float64, device="cpu")
    cu = op_kwargs.get("cu_seqlens")
    ref_kwargs = dict(op_kwargs, cu_seqlens=None if cu is None else cu.cpu())
    y_ref = ref_fn(**ref, **ref_kwargs)
    dy = torch.randn_like(y_ref)
    g_ref = grads_of(y_ref, ref, dy)
    y = getattr(ops, op_name)(**low, backend=backend, **op_kwargs)
    assert y.dtype == low["x"].dtype and y.device == low["x"].device
    g = grads_of(y, low, dy.to(dtype=dtype, device=device))
    tol = TOL[dtype] if tol is None else tol
    assert_close_rel(y.cpu(), y_ref, tol, f"{op_name}[{backend}] y")
    for k in g_ref:
        assert g[k] is not None, f"no gradient for {k}"
        assert g[k].dtype == low[k].dtype, f"grad {k} dtype {g[k].dtype} != {low[k].dtype}"
        assert_close_rel(g[k].cpu(), g_ref[k], tol, f"{op_name}[{backend}] d{k}")


def check_reverse_inputs_aliasing_forward(backend, device, dtype=torch.float32):
    """dt_rev=dt, A_rev=A, B_rev=B, C_rev=C as the very same tensor objects: autograd adds the
    gradients of both argument slots, which must equal the reference's gradient of the one
    tensor (the kernels may share such an input between the directions)."""
    import mmhnet.ops as ops
    from mmhnet.ops import reference as R

    a = make_scan_inputs(1, 37, 2, 4, 1, 8, dtype=torch.float64, D="h", dt_bias=True)
    for alias in (("dt",), ("A",), ("B",), ("C",), ("dt", "A", "B", "C")):
        low = clone_inputs(a, dtype=dtype, device=device)
        ref = clone_inputs(low, dtype=torch.float64, device="cpu")
        rev = {f"{k}_rev": low[k] for k in alias}
        y = ops.bi_selective_scan(**low, **rev, backend=backend)
        y_ref = R.bi_selective_scan_sequential(**ref, **{f"{k}_rev": ref[k] for k in alias})
        dy = torch.randn_like(y_ref)
        g, g_ref = grads_of(y, low, dy.to(dtype=dtype, device=device)), grads_of(y_ref, ref, dy)
        assert_close_rel(y.cpu(), y_ref, TOL[dtype], f"{alias} y")
        for k in g_ref:
            assert_close_rel(g[k].cpu(), g_ref[k], TOL[dtype], f"{alias} d{k}")


def bf16_bits_nearest_even(bits):
    """uint32 numpy array of fp32 bit patterns -> uint16 array of bf16 bit patterns, rounded to
    nearest, ties to even (add 0x7FFF plus the kept part's last bit, drop the low 16 bits), as a
    GPU and torch convert; Inf stays Inf, NaN stays (quiet) NaN."""
    import numpy as np

    bits = np.asarray(bits, dtype=np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000  # their carry could wrap or reach the sign
    return np.where(nan, ((bits >> 16) | 0x0040).astype(np.uint16), rounded)


def make_interpreter_round_bf16_to_nearest():
    """The Triton interpreter (3.9) converts fp32 to bf16 by dropping the low 16 bits (toward
    zero) where a GPU rounds to nearest even: make its cast round as a GPU's does, so that bf16
    outputs stored by kernels under TRITON_INTERPRET=1 carry the GPU's rounding error."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.cast_impl, "rounds_bf16_to_nearest", False):
        return
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.asarray(src.data, dtype=np.float32).view(np.uint32)
            return interpreter.TensorHandle(bf16_bits_nearest_even(bits), tl.bfloat16)
        return truncating(self, src, dst_type)

    cast_impl.rounds_bf16_to_nearest = True
    builder.cast_impl = cast_impl


def permuted(t):
    """The same values laid out with the dimensions' strides in reverse order: dense but not
    contiguous, as a transposed projection gives."""
    order = tuple(range(t.dim()))[::-1]
    return t.permute(order).contiguous().permute(order).detach().requires_grad_(t.requires_grad)
