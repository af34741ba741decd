"""Initial and final states of the scans (mamba_ssm's ``initial_states`` / ``return_final_states``)
on every backend: against an independent float64 sequential loop, and the property that
scanning a sequence in two halves, handing the first half's final state to the second, equals
scanning it whole (forward and every gradient, the initial state's included)."""

import random
import zlib

import pytest
import torch
import torch.nn.functional as F

import mmhnet.ops as ops
from helpers import HAS_CUDA, TOL, TRITON_DEVICE, assert_close_rel, make_scan_inputs

BACKENDS = [("reference", "cpu", torch.float64), ("reference", "cpu", torch.float32),
            ("cpu", "cpu", torch.float64), ("cpu", "cpu", torch.float32),
            ("triton", TRITON_DEVICE, torch.float32)] + (
    [("cuda", "cuda", torch.float32)] if HAS_CUDA else [])
BACKEND_IDS = [f"{b}-{str(t)[6:]}" for b, _, t in BACKENDS]
# (op, options): selective_scan both ways, bi_selective_scan in both modes
CALLS = [("selective_scan", dict(reverse=False)), ("selective_scan", dict(reverse=True)),
         ("bi_selective_scan", dict(mode="sum")),
         ("bi_selective_scan", dict(mode="quasiseparable"))]
CALL_IDS = ["fwd", "rev", "bi_sum", "bi_quasi"]
TOKEN_KEYS = ("x", "dt", "B", "C", "z", "dt_rev", "B_rev", "C_rev")
P, N = 3, 5  # headdim, dstate
# The Triton interpreter runs each program of a launch in Python (~3 s per call here at 2 heads,
# batch 1): it gets the smallest sizes and a few cases; the other backends take every case.
TRITON_CASES = {("test_states_against_sequential_loop", "packed", "bi_sum"),
                ("test_two_halves_equal_the_whole", None, "bi_quasi")}


def _dims(backend):
    """(batch, nheads, ngroups) of a case: two groups of two heads, or one head pair for Triton."""
    return (1, 2, 1) if backend == "triton" else (2, 4, 2)


def _cases(test, layouts):
    """(backend, device, dtype, call, layout) parameters of ``test``, Triton's thinned out."""
    out = []
    for (backend, device, dtype), bid in zip(BACKENDS, BACKEND_IDS):
        for call, cid in enumerate(CALL_IDS):
            for layout in layouts:
                if backend != "triton" or (test, layout, cid) in TRITON_CASES:
                    out.append(pytest.param(backend, device, dtype, call, layout,
                                            id=f"{bid}-{cid}" + (f"-{layout}" if layout else "")))
    return out


def _inputs(case, batch, seqlen, heads, groups, bi, dtype, device):
    """Random inputs; D, z, dt_bias and separate reverse parameters present or absent by case."""
    rng = random.Random(case)
    a = make_scan_inputs(batch, seqlen, heads, P, groups, N, dtype=torch.float64,
                         D=rng.choice([None, "h", "hp"]), z=rng.random() < 0.5,
                         dt_bias=rng.random() < 0.5,
                         rev=rng.choice([(), ("dt", "A", "B", "C")]) if bi else ())
    softplus = a.pop("dt_softplus")
    return {k: v.to(dtype=dtype, device=device) for k, v in a.items()}, softplus


def _state(nseq, heads, dtype, device):
    return torch.randn(nseq, heads, P, N, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# independent float64 loop
# ----------------------------------------------------------------------------------------------

def _loop(x, dt, A, B, C, h0, reverse):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t (x) x_t from h0, token by token (right to left when
    reverse); returns (C_t . h_t for every t, the last state)."""
    b, l, h, p = x.shape
    Bh = B.repeat_interleave(h // B.shape[2], 2)
    Ch = C.repeat_interleave(h // C.shape[2], 2)
    state = h0.clone() if h0 is not None else x.new_zeros(b, h, p, B.shape[3])
    ys = [None] * l
    for t in (range(l - 1, -1, -1) if reverse else range(l)):
        state = (torch.exp(dt[:, t] * A)[..., None, None] * state
                 + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
        ys[t] = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
    y = torch.stack(ys, 1) if l else x.new_zeros(b, 0, h, p)
    return y, state


def _shift(y, towards_end):
    """y_{t-1} (towards_end) or y_{t+1}, 0 where it leaves the sequence."""
    zero = torch.zeros_like(y[:, :1])
    if y.shape[1] == 0:
        return y
    return torch.cat([zero, y[:, :-1]], 1) if towards_end else torch.cat([y[:, 1:], zero], 1)


def oracle(op, a, softplus, opts, bounds, h0s, dt_limit=(0.0, float("inf"))):
    """The contract written as loops in float64: (y, [final state per direction])."""
    def eff(dt):
        d = dt + a["dt_bias"] if a.get("dt_bias") is not None else dt
        return (F.softplus(d) if softplus else d).clamp(*dt_limit)

    dirs = [(eff(a["dt"]), a["A"], a["B"], a["C"], opts.get("reverse", False))]
    if op == "bi_selective_scan":
        dirs.append((eff(a.get("dt_rev", a["dt"])), a.get("A_rev", a["A"]),
                     a.get("B_rev", a["B"]), a.get("C_rev", a["C"]), True))
    quasi = opts.get("mode") == "quasiseparable"
    segs = [(0, a["x"].shape[1])] if bounds is None else list(zip(bounds[:-1], bounds[1:]))
    ys, finals = [], [[] for _ in dirs]
    for j, (s, e) in enumerate(segs):
        total = 0
        for i, (dt, A, B, C, rev) in enumerate(dirs):
            h0 = h0s[i] if bounds is None or h0s[i] is None else h0s[i][j:j + 1]
            yd, last = _loop(a["x"][:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], h0, rev)
            total = total + (_shift(yd, not rev) if quasi else yd)
            finals[i].append(last)
        ys.append(total)
    y = torch.cat(ys, 1)
    if a.get("D") is not None:
        D = a["D"]
        y = y + (D[:, None] if D.dim() == 1 else D) * a["x"]
    if a.get("z") is not None:
        y = y * F.silu(a["z"])
    return y, [torch.cat(f, 0) for f in finals]


def _run(op, a, softplus, opts, backend, **kw):
    """The op with return_final_states=True; returns (y, [final state per direction])."""
    y, finals = getattr(ops, op)(**a, dt_softplus=softplus, **opts, backend=backend,
                                 return_final_states=True, **kw)
    return y, (list(finals) if op == "bi_selective_scan" else [finals])


def _grads(outs, leaves, seed):
    """Gradients of sum(out * w) over every output, w random (seeded, float64 then cast)."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, ws))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _leaves(a, states):
    for v in list(a.values()) + [s for s in states if s is not None]:
        v.requires_grad_(True)
    return list(a.values()) + [s for s in states if s is not None]


# ----------------------------------------------------------------------------------------------
# against the loop
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device,dtype,call,layout",
                         _cases("test_states_against_sequential_loop", ["batch", "packed"]))
def test_states_against_sequential_loop(backend, device, dtype, call, layout):
    """y and the final states with given initial states, and every gradient (the initial states'
    included), against the float64 loop on the same (rounded) inputs."""
    op, opts = CALLS[call]
    packed = layout == "packed"
    case = zlib.crc32(f"{backend}{dtype}{call}{packed}".encode()) % 10_000
    rng = random.Random(case)
    torch.manual_seed(case)
    rows, heads, groups = _dims(backend)
    if packed:
        lengths = [rng.choice([0, 1, 2, 5, 7]) for _ in range(3)]
        batch, seqlen = 1, sum(lengths)
        bounds = [0] + [sum(lengths[:i + 1]) for i in range(3)]
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    else:
        batch, seqlen, bounds, cu = rows, rng.choice([1, 2, 7, 11]), None, None
    nseq = 3 if packed else batch
    a, softplus = _inputs(case, batch, seqlen, heads, groups, op == "bi_selective_scan", dtype,
                          device)
    ndir = 2 if op == "bi_selective_scan" else 1
    # with two directions, also one direction's state absent
    states = [_state(nseq, heads, dtype, device),
              _state(nseq, heads, dtype, device) if case % 2 else None][:ndir]
    leaves = _leaves(a, states)
    init = tuple(states) if ndir == 2 else states[0]
    y, finals = _run(op, a, softplus, opts, backend, cu_seqlens=cu, initial_states=init)
    ref = {k: v.detach().double().cpu().requires_grad_(True) for k, v in a.items()}
    ref_states = [None if s is None else s.detach().double().cpu().requires_grad_(True)
                  for s in states]
    y_ref, f_ref = oracle(op, ref, softplus, opts, bounds, ref_states)
    tol = TOL[dtype]
    assert y.dtype == dtype and all(f.dtype == dtype for f in finals)
    assert_close_rel(y.cpu(), y_ref, tol, "y")
    for i, (f, fr) in enumerate(zip(finals, f_ref)):
        assert f.shape == (nseq, heads, P, N)
        assert_close_rel(f.cpu(), fr, tol, f"final state {i}")
    got = _grads([y] + finals, leaves, case)
    want = _grads([y_ref] + f_ref, list(ref.values()) + [s for s in ref_states if s is not None],
                  case)
    names = list(a) + [f"h0[{i}]" for i, s in enumerate(states) if s is not None]
    for name, g, w in zip(names, got, want):
        assert g is not None, f"no gradient for {name}"
        assert_close_rel(g.cpu(), w, tol, f"d{name}")


# ----------------------------------------------------------------------------------------------
# two halves
# ----------------------------------------------------------------------------------------------

def _split(a, m):
    left = {k: (v[:, :m] if k in TOKEN_KEYS else v) for k, v in a.items()}
    right = {k: (v[:, m:] if k in TOKEN_KEYS else v) for k, v in a.items()}
    return left, right


def _boundary_read(C, state, z):
    """C_t . state per head (C (b, g, n), state (b, h, p, n)), gated by silu(z_t) if z is given:
    what a quasiseparable output reads across the split (see test_two_halves)."""
    h = state.shape[1]
    out = torch.einsum("bhn,bhpn->bhp", C.repeat_interleave(h // C.shape[1], 1), state)
    return out if z is None else out * F.silu(z)


@pytest.mark.parametrize("backend,device,dtype,call,layout",
                         _cases("test_two_halves_equal_the_whole", [None]))
def test_two_halves_equal_the_whole(backend, device, dtype, call, layout):
    """Scan [0, m) and [m, L) with the first-scanned half's final state as the other's initial
    state: the same y, final states and gradients as one scan of [0, L). The reverse direction
    scans the right half first. (bi_selective_scan: a final state does not depend on the other
    direction's initial state, so the right half's reverse state is taken from a first call.)

    quasiseparable: y_m reads yf_{m-1} = C_{m-1} . h_{m-1} and y_{m-1} reads yr_m = C^r_m . r_m,
    which use the other half's C: a state cannot carry them (DESIGN.md), so the test adds these
    two terms, from the returned final states, to the halves' outputs."""
    op, opts = CALLS[call]
    case = zlib.crc32(f"halves{backend}{dtype}{call}".encode()) % 10_000
    rng = random.Random(case)
    torch.manual_seed(case)
    seqlen = rng.choice([2, 3, 8, 13])
    m = rng.randint(1, seqlen - 1)
    rows, heads, groups = _dims(backend)
    bi = op == "bi_selective_scan"
    a, softplus = _inputs(case, rows, seqlen, heads, groups, bi, dtype, device)
    h0 = [_state(rows, heads, dtype, device) for _ in range(2 if bi else 1)]
    leaves = _leaves(a, h0)
    run = lambda part, init: _run(op, part, softplus, opts, backend,  # noqa: E731
                                  initial_states=tuple(init) if bi else init[0])
    y, finals = run(a, h0)
    left, right = _split(a, m)
    if not bi:
        first, second = (right, left) if opts["reverse"] else (left, right)
        y1, (s1,) = run(first, h0)
        y2, (s2,) = run(second, [s1])
        y_split = torch.cat([y2, y1] if opts["reverse"] else [y1, y2], 1)
        finals_split = [s2]
    else:
        _, (_, r_right) = run(right, [None, h0[1]])
        y_l, (f_l, r_l) = run(left, [h0[0], r_right])
        y_r, (f_r, _) = run(right, [f_l, h0[1]])
        if opts["mode"] == "quasiseparable":
            C_rev, z = a.get("C_rev", a["C"]), a.get("z")
            y_r = torch.cat([y_r[:, :1] + _boundary_read(a["C"][:, m - 1], f_l, None if z is None
                                                         else z[:, m]).unsqueeze(1).to(y_r),
                             y_r[:, 1:]], 1)
            y_l = torch.cat([y_l[:, :-1],
                             y_l[:, -1:] + _boundary_read(C_rev[:, m], r_right, None if z is None
                                                          else z[:, m - 1]).unsqueeze(1).to(y_l)],
                            1)
        y_split, finals_split = torch.cat([y_l, y_r], 1), [f_r, r_l]
    tol = TOL[dtype]
    assert_close_rel(y_split.cpu(), y.cpu(), tol, f"y (split at {m} of {seqlen})")
    for i, (fs, f) in enumerate(zip(finals_split, finals)):
        assert_close_rel(fs.cpu(), f.cpu(), tol, f"final state {i}")
    g_whole = _grads([y] + finals, leaves, case)
    g_split = _grads([y_split] + finals_split, leaves, case)
    for name, gs, gw in zip(list(a) + ["h0_fwd", "h0_rev"], g_split, g_whole):
        assert gs is not None and gw is not None, f"no gradient for {name}"
        assert_close_rel(gs.cpu(), gw.cpu(), tol, f"d{name} (split at {m} of {seqlen})")


@pytest.mark.parametrize("backend,device,dtype", BACKENDS[:4], ids=BACKEND_IDS[:4])
def test_states_only_cost_when_used(backend, device, dtype):
    """return_final_states alone leaves y as without it (the kernels then get dt' computed in
    torch, the same to rounding), and zero initial states add nothing."""
    a, softplus = _inputs(3, 2, 9, 4, 2, True, dtype, device)
    y = ops.bi_selective_scan(**a, dt_softplus=softplus, mode="quasiseparable", backend=backend)
    y1, _ = ops.bi_selective_scan(**a, dt_softplus=softplus, mode="quasiseparable",
                                  backend=backend, return_final_states=True)
    zero = torch.zeros(2, 4, P, N, dtype=dtype)
    y2 = ops.bi_selective_scan(**a, dt_softplus=softplus, mode="quasiseparable", backend=backend,
                               initial_states=(zero, zero))
    assert_close_rel(y1, y, TOL[dtype], "final states requested")
    assert_close_rel(y2, y, TOL[dtype], "zero initial states")
