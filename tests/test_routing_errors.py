"""Bad inputs to the routing ops get clear errors that name the argument, never a crash."""

import pytest
import torch

from mmhnet.ops import (BackendUnavailableError, chunk_gather, chunk_scatter, ema_smooth,
                        ratio_loss, route_and_gather, route_boundaries, token_gather,
                        token_scatter)
from routing_cases import backend_device, backend_params


def _cu(*offsets):
    return torch.tensor(offsets, dtype=torch.int32)


def test_route_boundaries_shapes_dtypes_devices():
    q = torch.randn(6, 4)
    with pytest.raises(ValueError, match="q must have 2 dimensions"):
        route_boundaries(q[None], q[None])
    with pytest.raises(ValueError, match=r"k must have shape \(6, 4\)"):
        route_boundaries(q, torch.randn(6, 5))
    with pytest.raises(TypeError, match="q must have a floating-point dtype"):
        route_boundaries(q.long(), q.long())
    with pytest.raises(TypeError, match="cu_seqlens must have one of"):
        route_boundaries(q, q, torch.tensor([0.0, 6.0]))
    with pytest.raises(ValueError, match="cu_seqlens is on meta but q is on cpu"):
        route_boundaries(q, q, _cu(0, 6).to("meta"))
    with pytest.raises(TypeError, match="cu_seqlens must be a torch.Tensor or None, got list"):
        route_boundaries(q, q, [0, 6])


@pytest.mark.parametrize("backend", backend_params("route_and_gather"))
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                    (torch.bfloat16, torch.float32)])
def test_q_and_k_dtypes_must_match(backend, dtypes):
    """The kernels read k with q's element type: a mismatch is refused, not misread."""
    dev = backend_device(backend)
    q, k = torch.randn(6, 4, device=dev, dtype=dtypes[0]), torch.randn(6, 4, device=dev,
                                                                      dtype=dtypes[1])
    msg = f"k must have the dtype of q \\({dtypes[0]}\\), got {dtypes[1]}"
    with pytest.raises(TypeError, match=msg):
        route_boundaries(q, k, backend=backend)
    with pytest.raises(TypeError, match=msg):
        route_and_gather(q, k, q, backend=backend)


def test_value_dependent_sizes_refuse_meta_tensors():
    x, mask = torch.randn(6, 4, device="meta"), torch.ones(6, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="chunk_gather: the size of its output depends on the "
                                         "values of mask, and mask is a meta tensor"):
        chunk_gather(x, mask)
    with pytest.raises(ValueError, match="route_and_gather: .* q is a meta tensor"):
        route_and_gather(x, x, x)


@pytest.mark.parametrize("cu,match", [
    (_cu(1, 6), "must start at 0"),
    (_cu(0, 4, 3, 6), "must not decrease"),
    (_cu(0, 5), "must end at the total length 6"),
])
@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_inconsistent_cu_seqlens(backend, cu, match):
    dev = backend_device(backend)
    q = torch.randn(6, 4, device=dev)
    with pytest.raises(ValueError, match=match):
        route_boundaries(q, q, cu.to(dev), backend=backend)
    with pytest.raises(ValueError, match=match):
        route_and_gather(q, q, q, cu.to(dev), backend=backend)
    mask = torch.ones(6, dtype=torch.bool, device=dev)
    with pytest.raises(ValueError, match=match):
        chunk_gather(q, mask, cu.to(dev), backend=backend)
    with pytest.raises(ValueError, match="chunk_cu_seqlens " + match):
        ema_smooth(q, torch.full((6,), 0.5, device=dev), cu.to(dev), backend=backend)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("backend", [p for p in backend_params("chunk_gather")
                                     if backend_device(p.values[0]) == "cpu"])
def test_offsets_changed_through_numpy_are_read_again(backend, dtype):
    """Offsets changed through numpy (which shares memory with CPU tensors only) do not move
    torch's version counter: each call must see their current values, valid (new sequence
    starts) or not (refused)."""
    q, k = torch.randn(6, 4), torch.randn(6, 4)
    cu = torch.tensor([0, 3, 6], dtype=dtype)
    route_boundaries(q, k, cu, backend=backend)
    cu.numpy()[1] = 2
    p, mask = route_boundaries(q, k, cu, backend=backend)
    expected_p, expected_mask = route_boundaries(q, k, torch.tensor([0, 2, 6], dtype=dtype),
                                                 backend=backend)
    assert torch.equal(p, expected_p) and torch.equal(mask, expected_mask)
    cu.numpy()[1] = 1000
    with pytest.raises(ValueError, match="must not decrease"):
        route_boundaries(q, k, cu, backend=backend)


def test_route_and_gather_bad_arguments():
    q = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"k must have shape \(6, 4\)"):
        route_and_gather(q, torch.randn(6, 3), q)
    with pytest.raises(ValueError, match=r"x must have shape \(6, \*\), got \(5, 4\)"):
        route_and_gather(q, q, torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(6, \*\), got \(6,\)"):
        route_and_gather(q, q, torch.randn(6))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        route_and_gather(q, q, torch.ones(6, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x is on meta but q is on cpu"):
        route_and_gather(q, q, torch.randn(6, 2, device="meta"))
    with pytest.raises(TypeError, match="cu_seqlens must have one of"):
        route_and_gather(q, q, q, torch.tensor([0.0, 6.0]))


def test_chunk_gather_bad_mask():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"mask must have shape \(6,\), got \(5,\)"):
        chunk_gather(x, torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have one of .*bool"):
        chunk_gather(x, torch.ones(6))
    with pytest.raises(ValueError, match=r"p must have shape \(6,\)"):
        chunk_gather(x, torch.ones(6, dtype=torch.bool), p=torch.rand(7))


@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_chunk_gather_needs_boundaries_at_sequence_starts(backend):
    dev = backend_device(backend)
    x = torch.randn(6, 4, device=dev)
    mask = torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.bool, device=dev)
    with pytest.raises(ValueError, match="mask must be True at the first token"):
        chunk_gather(x, mask, _cu(0, 3, 6).to(dev), backend=backend)


def test_chunk_scatter_bad_arguments():
    z = torch.randn(3, 4)
    cid = torch.tensor([0, 0, 1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="give p and mask together"):
        chunk_scatter(z, cid, p=torch.rand(4))
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\)"):
        chunk_scatter(z, cid, p=torch.rand(4), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="chunk_id must have one of"):
        chunk_scatter(z, cid.float())
    with pytest.raises(ValueError, match="z_chunks must have 2 dimensions"):
        chunk_scatter(z[0], cid)
    with pytest.raises(ValueError, match="chunk_id ends at 2 but z_chunks has 5 rows"):
        chunk_scatter(torch.randn(5, 4), cid)
    with pytest.raises(ValueError, match="chunk_id must be non-decreasing"):
        chunk_scatter(z, torch.tensor([0, 2, 1, 2], dtype=torch.int32))


def test_ema_smooth_bad_arguments():
    z = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"p_chunks must have shape \(5,\)"):
        ema_smooth(z, torch.rand(4))
    with pytest.raises(ValueError, match="chunk_cu_seqlens must hold at least 2 offsets"):
        ema_smooth(z, torch.rand(5), _cu(0))
    for flag in ("False", torch.tensor([True, False]), 2, None):
        with pytest.raises(TypeError, match="bidirectional must be a bool"):
            ema_smooth(z, torch.rand(5), None, flag)


@pytest.mark.parametrize("backend", backend_params("token_gather"))
def test_token_index_out_of_range(backend):
    dev = backend_device(backend)
    x = torch.randn(5, 3, device=dev)
    # IndexOutOfRangeError is both an IndexError and a ValueError
    with pytest.raises(IndexError, match=r"index holds 5, outside \[0, 5\)"):
        token_gather(x, torch.tensor([0, 5], device=dev), backend=backend)
    with pytest.raises(ValueError, match=r"index holds -1, outside \[0, 5\)"):
        token_gather(x, torch.tensor([-1, 2], device=dev), backend=backend)
    with pytest.raises(IndexError, match=r"index holds 7, outside \[0, 4\)"):
        token_scatter(x[:2], torch.tensor([7, 1], device=dev), 4, backend=backend)


def test_token_bad_arguments():
    x = torch.randn(5, 3)
    with pytest.raises(TypeError, match="index must have one of"):
        token_gather(x, torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"index must have shape \(5,\)"):
        token_scatter(x, torch.tensor([0, 1]), 5)
    with pytest.raises(ValueError, match="num_rows must be a non-negative int"):
        token_scatter(x, torch.arange(5), -1)
    with pytest.raises(ValueError, match="num_rows has 4611686018427387904 rows; .* int32"):
        token_scatter(x, torch.arange(5), 2**62)


@pytest.mark.parametrize("target", [1, 1.0, 0.5, -3])
def test_ratio_loss_target_ratio(target):
    with pytest.raises(ValueError, match="target_ratio must be > 1"):
        ratio_loss(torch.ones(3, dtype=torch.bool), torch.rand(3), target)


@pytest.mark.parametrize("target,exc,match", [
    (float("inf"), ValueError, "target_ratio must be finite, got inf"),
    (float("nan"), ValueError, "target_ratio must be finite, got nan"),
    ("4", TypeError, "target_ratio must be a Python number, got str"),
    (True, TypeError, "target_ratio must be a Python number, got bool"),
    (torch.tensor(4.0), TypeError, "target_ratio must be a Python number, got Tensor"),
])
def test_ratio_loss_target_ratio_type_and_finite(target, exc, match):
    with pytest.raises(exc, match=match):
        ratio_loss(torch.ones(3, dtype=torch.bool), torch.rand(3), target)


def test_ratio_loss_bad_arguments():
    with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
        ratio_loss(torch.ones(4, dtype=torch.bool), torch.rand(3), 4.0)
    with pytest.raises(TypeError, match="mask must have one of .*bool"):
        ratio_loss(torch.ones(3), torch.rand(3), 4.0)
    with pytest.raises(ValueError, match="p is empty"):
        ratio_loss(torch.ones(0, dtype=torch.bool), torch.rand(0), 4.0)


def test_unknown_or_unavailable_backend():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        route_boundaries(q, q, backend="tpu")
    with pytest.raises(BackendUnavailableError, match="route_boundaries: backend 'cuda'"):
        route_boundaries(q, q, backend="cuda")


def test_triton_refuses_float64_gradients_before_the_forward():
    """The triton backend gathers rows of any dtype but sums gradients in float32: a float64
    input that needs a gradient is refused up front; without one the forward runs."""
    dev = backend_device("triton")
    x = torch.randn(5, 3, dtype=torch.float64, device=dev)
    index = torch.tensor([4, 0, 0, 2], device=dev)
    chunk_id = torch.tensor([0, 1, 1, 2, 3, 4, 4], device=dev)
    for call, name in ((lambda t: token_gather(t, index, backend="triton"), "x"),
                       (lambda t: chunk_scatter(t, chunk_id, backend="triton"), "z_chunks")):
        with pytest.raises(BackendUnavailableError,
                           match=f"backend 'triton' sums gradients in float32, and {name} is "
                                 f"float64 and requires grad"):
            call(x.clone().requires_grad_(True))
        with torch.no_grad():
            got = call(x.clone().requires_grad_(True))
        assert got.dtype == torch.float64 and torch.equal(got, call(x))
    assert torch.equal(token_gather(x, index, backend="triton"), x[index])
