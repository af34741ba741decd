"""The "triton" backend of the routing ops: the primitives of ``_routing_reference.py`` mapped
onto mmhnet.kernels.routing. Computes in float32 and takes float32, float16 and bfloat16; the
pure row copies (gathers, compaction) take any dtype (ops/routing.py refuses a float64 input
whose backward would be a row sum here before the forward runs)."""

import torch

from mmhnet.kernels import routing as K

from ._backend import BackendUnavailableError


def _check(**tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype == torch.float64:
            raise BackendUnavailableError(
                f"backend 'triton' computes in float32 and takes float32, float16 or bfloat16; "
                f"{name} is float64 (use backend='reference' or 'cpu' for float64)")


def _c(t):
    return t.contiguous()


def boundaries(q, k, cu):
    _check(q=q, k=k)
    return (*K.boundaries_fwd(_c(q), _c(k), cu), None)


def boundaries_backward(dp, q, k, cu, stats):
    _check(q=q, k=k)
    return K.boundaries_bwd(_c(dp), _c(q), _c(k), cu)


def chunk_index(mask, cu):
    return K.chunk_index(_c(mask), cu)


def compact_rows(x, mask, chunk_id, num_chunks):
    return K.compact_rows(_c(x), mask, chunk_id, num_chunks)


def expand_rows(src, chunk_id, mask):
    return K.gather_rows(_c(src), chunk_id, mask)


def segment_sum(src, seg_id, num_segments, order):
    # token_scatter's y, or the gradient that chunk_scatter's or token_gather's backward sums
    _check(**{"the rows to sum": src})
    return K.segment_sum(_c(src), _c(seg_id), num_segments, order, dense=order is None)


def confidence_grad(dz, z_chunks, chunk_id, mask):
    _check(z_chunks=z_chunks)
    return K.confidence_grad(_c(dz), _c(z_chunks), chunk_id, mask)


def ema(z, p, cu, bidirectional):
    _check(z_chunks=z, p_chunks=p)
    return K.ema_fwd(_c(z), _c(p), cu, bidirectional)


def ema_backward(de, z, p, cu, bidirectional):
    _check(z_chunks=z, p_chunks=p)
    return K.ema_bwd(_c(de), _c(z), _c(p), cu, bidirectional)


def gather_rows(x, index):
    return K.gather_rows(_c(x), _c(index))


def mask_p_means(mask, p):
    _check(p=p)
    return K.mask_p_means(_c(mask), _c(p))
