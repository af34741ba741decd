"""The references themselves: the sequential recurrence against an explicit materialised
semiseparable matrix, and the chunked (SSD) form against the sequential one."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TOL, assert_close_rel, clone_inputs, make_scan_inputs, random_cu_seqlens
from mmhnet.ops import reference as R


def _matrix_form(x, dt, A, B, C, D, z, dt_bias, dt_softplus, mode, lengths):
    """y = M x with M[t, s] built entry by entry from DESIGN.md Op 1 (one batch row)."""
    x, dt, B, C = x[0], dt[0], B[0], C[0]
    L, H, P = x.shape
    rep = H // B.shape[1]
    d = dt + (dt_bias if dt_bias is not None else 0)
    d = F.softplus(d) if dt_softplus else d
    lam = d * A  # (L, H)
    y = torch.zeros(L, H, P, dtype=x.dtype)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    for t in range(L):
        for s in range(L):
            if seq[t] != seq[s]:
                continue
            for h in range(H):
                cb = (C[t, h // rep] * B[s, h // rep]).sum()
                fwd = torch.exp(lam[s + 1:t + 1, h].sum()) if s <= t else 0.0
                rev = torch.exp(lam[t:s, h].sum()) if s >= t else 0.0
                if mode == "quasiseparable":
                    # yf_{t-1}: C_{t-1} h_{t-1};  yr_{t+1}: C_{t+1} r_{t+1}
                    w = 0.0
                    if t - 1 >= 0 and seq[t - 1] == seq[t] and s <= t - 1:
                        w = w + (C[t - 1, h // rep] * B[s, h // rep]).sum() * torch.exp(lam[s + 1:t, h].sum())
                    if t + 1 < L and seq[t + 1] == seq[t] and s >= t + 1:
                        w = w + (C[t + 1, h // rep] * B[s, h // rep]).sum() * torch.exp(lam[t + 1:s, h].sum())
                else:
                    w = cb * (fwd + rev)
                y[t, h] += w * d[s, h] * x[s, h]
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    if z is not None:
        y = y * F.silu(z[0])
    return y[None]


@pytest.mark.parametrize("mode", ["sum", "quasiseparable"])
def test_sequential_matches_matrix_form(mode):
    lengths = [3, 1, 5]
    args = make_scan_inputs(1, sum(lengths), 4, 3, 2, 5, dtype=torch.float64, D="h", z=True,
                            dt_bias=True)
    args.pop("dt_softplus")
    cu = random_cu_seqlens(lengths)
    y = R.bi_selective_scan_sequential(**args, dt_softplus=True, mode=mode, cu_seqlens=cu)
    y_mat = _matrix_form(args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                         args["z"], args["dt_bias"], True, mode, lengths)
    assert_close_rel(y, y_mat, 1e-12, "sequential vs matrix form")


def test_reverse_is_flip_scan_flip():
    args = make_scan_inputs(2, 23, 4, 3, 1, 5, dtype=torch.float64)
    y = R.selective_scan_sequential(**args, reverse=True)
    flipped = {k: (v.flip(1) if k in ("x", "dt", "B", "C") else v) for k, v in args.items()}
    y_flip = R.selective_scan_sequential(**flipped).flip(1)
    assert_close_rel(y, y_flip, 1e-13, "reverse vs flip-scan-flip")


CASES = [
    dict(L=1), dict(L=2, D="hp", z=True), dict(L=37, dt_bias=True, softplus=False),
    dict(L=70, g=2, D="h", rev=("dt", "A", "B", "C")), dict(L=50, lengths=[1, 20, 1, 28]),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("mode", ["sum", "quasiseparable"])
def test_chunked_matches_sequential(case, mode):
    lengths = case.get("lengths")
    args = make_scan_inputs(1 if lengths else 2, case["L"], 4, 3, case.get("g", 1), 5,
                            dtype=torch.float64, D=case.get("D"), z=case.get("z", False),
                            dt_bias=case.get("dt_bias", False), rev=case.get("rev", ()),
                            dt_softplus=case.get("softplus", True))
    cu = random_cu_seqlens(lengths) if lengths else None
    y_seq = R.bi_selective_scan_sequential(**args, mode=mode, cu_seqlens=cu)
    y_chk = R.bi_selective_scan_chunked(**args, mode=mode, cu_seqlens=cu, chunk_size=16)
    assert_close_rel(y_chk, y_seq, TOL[torch.float64], "chunked vs sequential")
    for reverse in (False, True):
        a = {k: v for k, v in args.items() if not k.endswith("_rev")}
        y_seq = R.selective_scan_sequential(**a, reverse=reverse, cu_seqlens=cu)
        y_chk = R.selective_scan_chunked(**a, reverse=reverse, cu_seqlens=cu, chunk_size=16)
        assert_close_rel(y_chk, y_seq, TOL[torch.float64], f"chunked vs sequential reverse={reverse}")


def test_reference_backend_gradients():
    """The reference backend's backward (autograd through the chunked form) against autograd
    through the sequential recurrence."""
    from helpers import check_scan_against_reference

    args = make_scan_inputs(1, 45, 4, 3, 2, 5, dtype=torch.float64, D="hp", z=True,
                            dt_bias=True, rev=("dt", "C"))
    cu = random_cu_seqlens([1, 30, 14])
    check_scan_against_reference("bi_selective_scan", args, backend="reference",
                                 dtype=torch.float64, device="cpu", mode="quasiseparable",
                                 cu_seqlens=cu)
    args = {k: v for k, v in clone_inputs(args).items() if not k.endswith("_rev")}
    check_scan_against_reference("selective_scan", args, backend="reference",
                                 dtype=torch.float64, device="cpu", reverse=True)
