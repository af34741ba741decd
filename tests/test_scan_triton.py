"""The Triton backend of the scans against the float64 sequential reference: forward and every
gradient. Without a GPU it runs under TRITON_INTERPRET=1 on CPU tensors, with a 16-token chunk
so that short sequences span several chunks, and 16-bit matmul operands rounded as a GPU rounds
them (kernels/scan/common.py: mm); on a GPU it also runs large shapes."""

import pytest
import torch

import mmhnet.ops._scan_triton as scan_triton
from helpers import (HAS_CUDA, TOL, TRITON_DEVICE, assert_close_rel, check_scan_against_reference,
                     check_reverse_inputs_aliasing_forward, clone_inputs, make_scan_inputs,
                     permuted, random_cu_seqlens)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(scan_triton, "CHUNK_SIZE", 16)


# (seqlen or packed lengths, nheads, headdim, ngroups, dstate, options)
BI_CASES = [
    ("len1", 1, 2, 4, 1, 8, dict()),
    ("len2_D_h", 2, 2, 4, 1, 8, dict(D="h")),
    ("odd_all_options", 37, 4, 8, 2, 16, dict(D="hp", z=True, dt_bias=True)),
    ("multi_chunk_rev_all", 50, 4, 8, 2, 16, dict(D="h", rev=("dt", "A", "B", "C"))),
    ("rev_dt_B_no_softplus", 33, 2, 5, 1, 6, dict(rev=("dt", "B"), softplus=False, z=True)),
    ("rev_A_C_bias", 29, 4, 8, 4, 16, dict(rev=("A", "C"), dt_bias=True)),
    ("exact_chunks", 32, 2, 8, 1, 16, dict(D="hp")),
    ("packed", [1, 17, 1, 2, 21], 4, 8, 2, 16, dict(D="h", z=True, dt_bias=True)),
    ("packed_rev_params", [5, 0, 16, 1], 2, 4, 1, 8, dict(rev=("dt", "A", "B", "C"), D="hp")),
]


def _inputs(case, dtype=torch.float64):
    _, lengths, h, p, g, n, opt = case
    packed = isinstance(lengths, list)
    L = sum(lengths) if packed else lengths
    args = make_scan_inputs(1 if packed else 2, L, h, p, g, n, dtype=dtype, D=opt.get("D"),
                            z=opt.get("z", False), dt_bias=opt.get("dt_bias", False),
                            rev=opt.get("rev", ()), dt_softplus=opt.get("softplus", True))
    cu = random_cu_seqlens(lengths, TRITON_DEVICE) if packed else None
    return args, cu


@pytest.mark.parametrize("case", BI_CASES, ids=[c[0] for c in BI_CASES])
@pytest.mark.parametrize("mode", ["sum", "quasiseparable"])
def test_bi_selective_scan_fp32(case, mode):
    args, cu = _inputs(case)
    check_scan_against_reference("bi_selective_scan", args, backend="triton", dtype=torch.float32,
                                 device=TRITON_DEVICE, mode=mode, cu_seqlens=cu)


SINGLE_CASES = [BI_CASES[0], BI_CASES[2], BI_CASES[4], BI_CASES[7]]


@pytest.mark.parametrize("case", SINGLE_CASES, ids=[c[0] for c in SINGLE_CASES])
@pytest.mark.parametrize("reverse", [False, True])
def test_selective_scan_fp32(case, reverse):
    args, cu = _inputs(case)
    args = {k: v for k, v in args.items() if not k.endswith("_rev")}
    check_scan_against_reference("selective_scan", args, backend="triton", dtype=torch.float32,
                                 device=TRITON_DEVICE, reverse=reverse, cu_seqlens=cu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["sum", "quasiseparable"])
def test_half_precision(dtype, mode):
    args, cu = _inputs(("packed", [3, 30, 14], 4, 8, 2, 16, dict(D="h", z=True, dt_bias=True)))
    check_scan_against_reference("bi_selective_scan", args, backend="triton", dtype=dtype,
                                 device=TRITON_DEVICE, mode=mode, cu_seqlens=cu)


def test_strided_inputs():
    """x, z, dt, B, C as views into one projection output, as a Mamba2 layer produces them."""
    import mmhnet.ops as ops
    from mmhnet.ops import reference as R

    b, L, h, p, g, n = 2, 21, 2, 8, 1, 16
    proj = torch.randn(b, L, 2 * h * p + 2 * g * n + h, device=TRITON_DEVICE)
    A = -torch.rand(h, device=TRITON_DEVICE) - 0.5
    D = torch.randn(h, device=TRITON_DEVICE)

    def split(t):
        z, x, B, C, dt = torch.split(t, [h * p, h * p, g * n, g * n, h], dim=-1)
        return dict(x=x.unflatten(-1, (h, p)), z=z.unflatten(-1, (h, p)),
                    B=B.unflatten(-1, (g, n)), C=C.unflatten(-1, (g, n)), dt=dt)

    views = split(proj)
    assert not views["x"].is_contiguous()
    y = ops.bi_selective_scan(**views, A=A, D=D, dt_softplus=True, backend="triton",
                              mode="quasiseparable")
    y_ref = R.bi_selective_scan_sequential(**split(proj.double().cpu()), A=A.double().cpu(),
                                           D=D.double().cpu(), dt_softplus=True,
                                           mode="quasiseparable")
    assert_close_rel(y.cpu(), y_ref, TOL[torch.float32], "strided inputs")


def test_opcheck_triton():
    args, cu = _inputs(("packed", [3, 20], 2, 4, 1, 8, dict(D="h", z=True, dt_bias=True,
                                                             rev=("B",))), dtype=torch.float32)
    a = clone_inputs(args, device=TRITON_DEVICE)
    sample = (a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], a["dt_bias"], None, None,
              a["B_rev"], None, cu, True, 3, True, "triton")
    torch.library.opcheck(torch.ops.mmhnet.bi_scan.default, sample,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_triton_permuted_inputs():
    """Dense inputs with permuted strides: the fake kernel must give the real output's strides."""
    args, _ = _inputs(("bi", 20, 2, 4, 1, 8, dict(D="h", z=True)), dtype=torch.float32)
    a = {k: permuted(v) if k in ("x", "z", "dt", "B") else v
         for k, v in clone_inputs(args, device=TRITON_DEVICE).items()}
    assert not a["x"].is_contiguous()
    sample = (a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], None, None, None, None,
              None, None, True, 3, False, "triton")
    torch.library.opcheck(torch.ops.mmhnet.bi_scan.default, sample,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_reverse_inputs_aliasing_forward():
    check_reverse_inputs_aliasing_forward("triton", TRITON_DEVICE)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (the interpreter takes ~13 CPU "
                                              "minutes per dtype at this shape)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
def test_large_gpu(dtype, monkeypatch):
    """Real chunk size, long packed sequences, headdim 64, dstate 128 (BiMamba2 defaults)."""
    monkeypatch.setattr(scan_triton, "CHUNK_SIZE", 64)
    args, cu = _inputs(("large", [700, 1, 1300, 63], 8, 64, 2, 128,
                        dict(D="h", z=True, dt_bias=True)))
    check_scan_against_reference("bi_selective_scan", args, backend="triton", dtype=dtype,
                                 device="cuda", mode="sum", cu_seqlens=cu)


@pytest.mark.parametrize("dims", [(2, 4, 1, 0), (1, 1, 1, 1), (3, 5, 3, 2)],
                         ids=["dstate0", "one_head_one_channel", "groups_equal_heads"])
def test_edge_dims(dims):
    h, p, g, n = dims
    args = make_scan_inputs(1, 20, h, p, g, n, dtype=torch.float64, D="h", z=True)
    check_scan_against_reference("bi_selective_scan", args, backend="triton", dtype=torch.float32,
                                 device=TRITON_DEVICE, mode="quasiseparable")


@pytest.mark.parametrize("mode", ["sum", "quasiseparable"])
def test_backward_reads_dstate_in_slices(mode):
    """dstate 40 over the backward's dstate slices (launch.BWD_BLOCK_K columns): full slices, a
    partly masked one and (padded to 64) an empty one, with reverse-direction B and C (their
    gradients in separate slots) and packed sequences."""
    import mmhnet.kernels.scan.launch as launch

    assert launch.BWD_BLOCK_K < 40 and 40 % launch.BWD_BLOCK_K
    args, cu = _inputs(("slices", [9, 28], 2, 8, 1, 40, dict(D="h", z=True, rev=("B", "C"))))
    check_scan_against_reference("bi_selective_scan", args, backend="triton", dtype=torch.float32,
                                 device=TRITON_DEVICE, mode=mode, cu_seqlens=cu)


def test_fp32_matmul_precision_follows_torch():
    """float32 inputs get TF32 matmuls exactly when torch allows them, through either of torch's
    APIs (reading allow_tf32 raises once the newer fp32_precision API has been used). In a child
    process: the settings are global and would leak into other tests."""
    import subprocess
    import sys

    code = """
import torch
from mmhnet.kernels.scan.launch import tf32_allowed
m = torch.backends.cuda.matmul
seen = [tf32_allowed()]
torch.set_float32_matmul_precision("high"); seen.append(tf32_allowed())
m.allow_tf32 = False; seen.append(tf32_allowed())
m.fp32_precision = "tf32"; seen.append(tf32_allowed())
m.fp32_precision = "ieee"; seen.append(tf32_allowed())
torch.backends.fp32_precision = "tf32"; m.fp32_precision = "none"; seen.append(tf32_allowed())
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == str([False, True, False, True, False, True]), out.stdout


@pytest.mark.parametrize("dims,dtype,match", [
    # a padded tile past the dtype's limit needs more shared memory than a block has on sm_90
    ((1, 256, 1, 256), torch.float16, r"up to 32768 for float16 inputs.*got headdim 256, dstate "
                                      r"256 \(use backend='cuda' or 'reference'\)"),
    ((1, 128, 1, 256), torch.float32, r"up to 16384 for float32 inputs.*got headdim 128, dstate "
                                      r"256 \(use backend='cuda' or 'reference'\)"),
    ((1, 256, 1, 128), torch.float32, r"^backend 'triton' .*up to 16384 for float32"),
    ((1, 8, 1, 257), torch.float32, "up to 256"),
    ((65536, 1, 1, 1), torch.float32, "at most 65535 heads"),  # CUDA's limit on a grid axis
], ids=["fp16_256x256", "fp32_128x256", "fp32_256x128", "dstate257", "heads"])
def test_limits_are_clear_errors(dims, dtype, match):
    h, p, g, n = dims
    args = make_scan_inputs(1, 3, h, p, g, n, device=TRITON_DEVICE, dtype=dtype)
    args.pop("dt_softplus")
    with pytest.raises(ValueError, match=match):
        import mmhnet.ops as ops
        ops.bi_selective_scan(**args, backend="triton")


@pytest.mark.parametrize("p,n,dtype", [(64, 256, torch.float32), (256, 64, torch.float32),
                                       (128, 256, torch.float16)],
                         ids=["fp32_64x256", "fp32_256x64", "fp16_128x256"])
def test_largest_tiles_below_the_limit_run(p, n, dtype):
    """The largest padded tiles served: 16384 for float32 inputs, 32768 for 16-bit ones
    (launch.MAX_TILE; tests/test_triton_aot.py checks that they fit sm_90's shared memory)."""
    import mmhnet.kernels.scan.launch as launch

    assert p * n == launch.max_tile(dtype)
    args = make_scan_inputs(1, 5, 1, p, 1, n, dtype=torch.float64)
    check_scan_against_reference("selective_scan", {k: v for k, v in args.items()},
                                 backend="triton", dtype=dtype, device=TRITON_DEVICE)
