"""16-bit rounding inside the Triton kernels as a GPU does it, also under TRITON_INTERPRET=1:
the scan's matmul operands (kernels/scan/common.py: round_like_gpu, mm) and the fp32 -> bf16
conversion of stored outputs (the interpreter's own truncates; conftest.py makes it round).
Bit for bit against torch's conversions, on random values, ties, subnormals, overflow, Inf, NaN.
On a GPU the same tests check the compiled conversions and tensor-core products."""

import pytest
import torch
import triton
import triton.language as tl

from helpers import TRITON_DEVICE, rel_err
from mmhnet.kernels.scan.common import mm, round_like_gpu

HALF = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def hard_values(dtype):
    """fp32 values (1-D) that test a rounding to ``dtype``: random magnitudes over the whole
    fp32 range, exact ties between two neighbours (even and odd last kept bit), values one fp32
    step either side of a tie, fp32 and ``dtype`` subnormals, values that round to Inf, +-0,
    +-Inf and NaN."""
    n = 4096
    random = torch.randn(n) * torch.exp2(torch.randint(-150, 128, (n,)).float())
    lo = (torch.randn(n) * 100).to(dtype)  # an even and an odd last bit equally often
    hi = (lo.view(torch.int16) + 1).view(dtype)  # its neighbour away from zero (finite here)
    ties = ((lo.double() + hi.double()) / 2).float()  # exact in fp32
    near = torch.cat([torch.nextafter(ties, torch.zeros(n)),
                      torch.nextafter(ties, torch.full((n,), float("inf")))])
    info = torch.finfo(dtype)
    step = info.tiny * info.eps  # the smallest subnormal: multiples of half of it are ties
    fp32_tiny = torch.finfo(torch.float32).tiny
    small = torch.cat([torch.rand(256) * info.tiny, torch.rand(256) * fp32_tiny,
                       torch.arange(1, 64) * step / 2])
    big = torch.tensor([info.max, info.max * (1 + info.eps / 4),  # rounds down to max
                        info.max * (1 + info.eps / 2), 3.4e38])  # a tie, rounds to Inf (even)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    values = torch.cat([random, ties, near, small, big, special])
    return torch.cat([values, -values])


def assert_same_floats(out, expected):
    """Equal bit patterns, any NaN matching any NaN (torch writes one canonical NaN)."""
    nan = expected.isnan()
    assert torch.equal(out.isnan(), nan)
    out, expected = out[~nan], expected[~nan]
    bad = (out.view(torch.int32) != expected.view(torch.int32)).nonzero()[:, 0]
    assert bad.numel() == 0, (f"{bad.numel()} values differ, e.g. "
                              f"{expected[bad[:3]].tolist()} -> {out[bad[:3]].tolist()}")


@triton.jit
def _round_kernel(x_ptr, out_ptr, n, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    tl.store(out_ptr + i, round_like_gpu(x, DTYPE), mask=i < n)


@triton.jit
def _cast_store_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    tl.store(out_ptr + i, x.to(out_ptr.dtype.element_ty), mask=i < n)


@triton.jit
def _mm_kernel(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
               MM_DTYPE: tl.constexpr):
    m, k, n = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])
    tl.store(out_ptr + m[:, None] * N + n[None, :], mm(a, b, MM_DTYPE, "ieee"))


@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
def test_operand_rounding_is_torchs_bit_for_bit(dtype):
    """round_like_gpu (the rounding of mm's operands) against torch's x.to(dtype).float()."""
    x = hard_values(dtype).to(TRITON_DEVICE)
    out = torch.empty_like(x)
    block = 1024
    with _numpy_overflow_is_expected():
        _round_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), HALF[dtype], block)
    assert_same_floats(out.cpu(), x.cpu().to(dtype).float())


@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
def test_stored_outputs_round_as_torch(dtype):
    """An fp32 value stored into a 16-bit tensor (the kernels' outputs) gets torch's bits."""
    x = hard_values(dtype).to(TRITON_DEVICE)
    out = torch.empty(x.shape, dtype=dtype, device=TRITON_DEVICE)
    block = 1024
    with _numpy_overflow_is_expected():
        _cast_store_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), block)
    assert_same_floats(out.cpu().float(), x.cpu().to(dtype).float())


@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
def test_mm_multiplies_rounded_operands_in_fp32(dtype):
    """mm(a, b) of fp32 tiles with 16-bit MM_DTYPE is the product of the rounded operands with
    fp32 accumulation (products of 16-bit values are exact in fp32), and differs from the fp32
    product by the operands' rounding (so the rounding is not skipped)."""
    M, K, N = 32, 64, 16
    a = torch.randn(M, K, device=TRITON_DEVICE)
    b = torch.randn(K, N, device=TRITON_DEVICE)
    out = torch.empty(M, N, device=TRITON_DEVICE)
    _mm_kernel[(1,)](a, b, out, M, K, N, HALF[dtype])
    rounded = a.cpu().to(dtype).double() @ b.cpu().to(dtype).double()
    exact = a.cpu().double() @ b.cpu().double()
    eps = torch.finfo(dtype).eps
    assert rel_err(out.cpu(), rounded) < 1e-6  # fp32 accumulation of 64 exact products
    assert rel_err(out.cpu(), exact) > eps / 16  # ~eps / sqrt(12) / sqrt(2) from the operands


class _numpy_overflow_is_expected:
    """The interpreter converts to fp16 with numpy, which warns where a value overflows to Inf
    (part of what is tested): silence that one warning."""

    def __enter__(self):
        import numpy as np

        self._before = np.seterr(over="ignore")

    def __exit__(self, *exc):
        import numpy as np

        np.seterr(**self._before)
