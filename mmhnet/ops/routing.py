"""Public dynamic chunking and routing ops (DESIGN.md, "Op 2"; details in docs/routing.md).

H-Net's routing machinery, made non-causal, on packed tokens ``(total_tokens, dim)`` with
``cu_seqlens`` (int32/int64 ``(nseq + 1,)``, 0 first, non-decreasing, total_tokens last; empty
sequences allowed; None = one sequence). A typical round trip::

    p, mask = route_boundaries(q, k, cu_seqlens)
    x_chunks, chunk_cu, chunk_id, p_chunks = chunk_gather(x, mask, cu_seqlens, p=p)
    # or both at once (one fused boundaries + compaction kernel on CUDA):
    # p, mask, x_chunks, chunk_cu, chunk_id, p_chunks = route_and_gather(q, k, x, cu_seqlens)
    y_chunks = main_network(x_chunks, chunk_cu)
    y_chunks = ema_smooth(y_chunks, p_chunks, chunk_cu, bidirectional=True)  # clamps p_chunks
    y = chunk_scatter(y_chunks, chunk_id, p=p, mask=mask)   # confidence straight-through
    loss_aux = ratio_loss(mask, p, target_ratio=4.0)

Every op takes ``backend=None | "reference" | "triton" | "cpu" | "cuda"`` (DESIGN.md,
"Backends") and is a torch.library custom op with autograd.
"""

import torch

from . import _routing_library  # noqa: F401  (registers the torch.ops.mmhnet routing ops)
from ._backend import BackendUnavailableError, resolve_backend
from ._checks import (check_cu_seqlens_meta, check_flag, check_has_values, check_number,
                      check_same_device, check_same_dtype, check_tensor, check_token_count,
                      offsets_int32)
from .reference import compute_dtype
from .reference_routing import EMA_P_MIN

__all__ = ["route_boundaries", "chunk_gather", "route_and_gather", "chunk_scatter", "ema_smooth",
           "token_gather", "token_scatter", "ratio_loss"]

INDEX_DTYPES = (torch.int32, torch.int64)
BOOL = (torch.bool,)

# Backends each op implements, and the function mmhnet._C / mmhnet._C_cuda must export for it.
_OPS = {
    "route_boundaries": (("reference", "triton", "cpu", "cuda"), "routing_boundaries"),
    "chunk_gather": (("reference", "triton", "cpu", "cuda"), "routing_compact_rows"),
    "route_and_gather": (("reference", "triton", "cpu", "cuda"), "routing_chunk_index"),
    "chunk_scatter": (("reference", "triton", "cpu", "cuda"), "routing_segment_sum"),
    "ema_smooth": (("reference", "triton", "cpu"), "routing_ema"),
    "token_gather": (("reference", "triton", "cpu", "cuda"), "routing_gather_rows"),
    "token_scatter": (("reference", "triton", "cpu", "cuda"), "routing_segment_sum"),
    "ratio_loss": (("reference", "triton", "cpu"), "routing_mask_p_means"),
}


def _backend(backend, device, op):
    backends, symbol = _OPS[op]
    return resolve_backend(backend, device, op, symbol, backends)


def _refuse_float64_gradient(be, name, t, op):
    """The triton backend copies rows of any dtype but sums them in float32: a float64 input
    that will need its gradient (a row sum) is refused before the forward runs, not after."""
    if (be == "triton" and t.dtype == torch.float64 and t.requires_grad
            and torch.is_grad_enabled()):
        raise BackendUnavailableError(
            f"{op}: backend 'triton' sums gradients in float32, and {name} is float64 and "
            f"requires grad (use backend='reference' or 'cpu' for float64, or call it under "
            f"torch.no_grad())")


def route_boundaries(q, k, cu_seqlens=None, *, backend=None):
    """Boundary probabilities of adjacent tokens (fused normalise + cosine).

    q, k: (T, dim) projected tokens (float); cu_seqlens: None | (nseq + 1,).
    Returns p (T,) float32 (float64 for float64 inputs) and mask (T,) bool:
    p_t = clamp((1 - cos(q_t, k_{t-1})) / 2, 0, 1), p_t = 1 at each sequence's first token;
    mask_t = p_t > 0.5 (a tie is not a boundary; every sequence start is one).
    Gradients flow to q and k.
    """
    check_tensor("q", q, ndim=2)
    check_tensor("k", k, shape=tuple(q.shape))
    check_same_dtype("k", k, "q", q)
    check_same_device([("q", q), ("k", k), ("cu_seqlens", cu_seqlens)])
    check_token_count("q", q.shape[0], "rows (tokens)")
    check_cu_seqlens_meta(cu_seqlens, 1)
    be = _backend(backend, q.device, "route_boundaries")
    cu = offsets_int32(cu_seqlens, q.shape[0])
    p, mask, _ = torch.ops.mmhnet.route_boundaries(q, k, cu, be)
    return p, mask


def chunk_gather(x, mask, cu_seqlens=None, *, p=None, backend=None):
    """Keep the boundary tokens: compaction by a prefix sum of the mask.

    x: (T, dim) float; mask: (T,) bool, True at least at every sequence's first token;
    cu_seqlens: None | (nseq + 1,); p: None | (T,) float, gathered alongside (p_chunks).
    Returns (x_chunks (C, dim), chunk_cu_seqlens (nseq + 1,) int32, chunk_id (T,) int32), plus
    p_chunks (C,) when p is given. C = number of boundaries; x_chunks are the rows of x where
    mask is True, in order; chunk_cu_seqlens offsets each sequence's chunks; chunk_id[t] =
    (number of boundaries at or before t) - 1, the chunk token t belongs to.

    Exactly one host sync (to size x_chunks; it also reads cu_seqlens for validation).
    Gradients flow to x (and p): the backward scatters into the boundary rows.
    """
    check_tensor("x", x, ndim=2)
    total = x.shape[0]
    check_tensor("mask", mask, shape=(total,), dtypes=BOOL)
    check_tensor("p", p, shape=(total,), optional=True)
    check_same_device([("x", x), ("mask", mask), ("cu_seqlens", cu_seqlens), ("p", p)])
    check_has_values("mask", mask, "chunk_gather")
    check_token_count("x", total, "rows (tokens)")
    check_cu_seqlens_meta(cu_seqlens, 1)
    be = _backend(backend, x.device, "chunk_gather")
    x_chunks, chunk_cu, chunk_id, p_chunks = torch.ops.mmhnet.chunk_gather(
        x, mask, offsets_int32(cu_seqlens, total), p, be)
    if p is None:
        return x_chunks, chunk_cu, chunk_id
    return x_chunks, chunk_cu, chunk_id, p_chunks


def route_and_gather(q, k, x, cu_seqlens=None, *, backend=None):
    """route_boundaries followed by chunk_gather(x, mask, cu_seqlens, p=p), as one op.

    q, k: (T, dim_qk) projected tokens; x: (T, dim) float, the rows to keep; cu_seqlens:
    None | (nseq + 1,). Returns (p, mask, x_chunks, chunk_cu_seqlens, chunk_id, p_chunks) with
    the shapes and values of the two ops. On CUDA one kernel computes p, the mask, chunk_id and
    chunk_cu_seqlens (warp ballots and a block prefix sum, tiles chained by a decoupled
    look-back); other backends run the two ops' kernels. One host sync (to size x_chunks), plus
    one the first time a given cu_seqlens tensor is validated on a GPU. Gradients flow to q, k
    (through p and p_chunks) and x.
    """
    check_tensor("q", q, ndim=2)
    check_tensor("k", k, shape=tuple(q.shape))
    check_tensor("x", x, shape=(q.shape[0], None))
    check_same_dtype("k", k, "q", q)
    check_same_device([("q", q), ("k", k), ("x", x), ("cu_seqlens", cu_seqlens)])
    check_has_values("q", q, "route_and_gather")
    check_token_count("q", q.shape[0], "rows (tokens)")
    check_cu_seqlens_meta(cu_seqlens, 1)
    be = _backend(backend, q.device, "route_and_gather")
    return torch.ops.mmhnet.route_and_gather(q, k, x, offsets_int32(cu_seqlens, q.shape[0]),
                                             be)[:6]


def chunk_scatter(z_chunks, chunk_id, *, p=None, mask=None, backend=None):
    """Dechunk: every token takes its chunk's row, z_t = z_chunks[chunk_id[t]].

    z_chunks: (C, dim) float; chunk_id: (T,) int32/int64 as chunk_gather returned it.
    p, mask: both None, or both (T,) (float, bool) from route_boundaries: then the output is
    multiplied by a straight-through confidence, exactly 1 in the forward pass, whose gradient
    reaches p through c_t = p_t if mask_t else 1 - p_t (H-Net's upsampler).
    Returns (T, dim) like z_chunks. The backward segment-sums the gradient per chunk in a fixed
    order (deterministic, no atomics). chunk_id values are validated on CPU only (on CUDA that
    would cost a host sync; the kernels never read out of bounds).
    """
    check_tensor("z_chunks", z_chunks, ndim=2)
    check_tensor("chunk_id", chunk_id, ndim=1, dtypes=INDEX_DTYPES)
    total = chunk_id.shape[0]
    check_token_count("chunk_id", total, "entries (tokens)")
    if (p is None) != (mask is None):
        raise ValueError("chunk_scatter: give p and mask together (confidence straight-through "
                         "estimator) or neither")
    check_tensor("p", p, shape=(total,), optional=True)
    check_tensor("mask", mask, shape=(total,), dtypes=BOOL, optional=True)
    check_same_device([("z_chunks", z_chunks), ("chunk_id", chunk_id), ("p", p), ("mask", mask)])
    be = _backend(backend, z_chunks.device, "chunk_scatter")
    _refuse_float64_gradient(be, "z_chunks", z_chunks, "chunk_scatter")
    return torch.ops.mmhnet.chunk_scatter(z_chunks, chunk_id, p, mask, be)


def ema_smooth(z_chunks, p_chunks, chunk_cu_seqlens=None, bidirectional=False, *, backend=None):
    """Exponential moving average over the chunks of each sequence.

    z_chunks: (C, dim) float; p_chunks: (C,) float, the boundary probabilities of the chunks
    (chunk_gather's p_chunks), clamped here to [1e-4, 1 - 1e-4] as DESIGN.md and H-Net say
    (in float32, or float64 for float64 z_chunks); chunk_cu_seqlens: None | (nseq+1,).
    e_c = p_c z_c + (1 - p_c) e_{c-1}, e = 0 before each sequence; bidirectional: the mean of e
    and the same recurrence run right to left. Returns (C, dim) like z_chunks; gradients flow
    to z_chunks and p_chunks (none to a p_c outside the clamp's range).
    """
    check_tensor("z_chunks", z_chunks, ndim=2)
    check_tensor("p_chunks", p_chunks, shape=(z_chunks.shape[0],))
    check_same_device([("z_chunks", z_chunks), ("p_chunks", p_chunks),
                       ("chunk_cu_seqlens", chunk_cu_seqlens)])
    check_token_count("z_chunks", z_chunks.shape[0], "rows (chunks)")
    check_cu_seqlens_meta(chunk_cu_seqlens, 1, name="chunk_cu_seqlens")
    be = _backend(backend, z_chunks.device, "ema_smooth")
    rate = p_chunks.to(compute_dtype(z_chunks)).clamp(EMA_P_MIN, 1 - EMA_P_MIN)
    chunk_cu = offsets_int32(chunk_cu_seqlens, z_chunks.shape[0], "chunk_cu_seqlens")
    return torch.ops.mmhnet.ema_smooth(z_chunks, rate, chunk_cu,
                                       check_flag("bidirectional", bidirectional), be)


def token_gather(x, index, *, backend=None):
    """General routing: x (N, dim), index (M,) int32/int64 in [0, N) -> x[index] (M, dim).

    An index outside [0, N) raises IndexOutOfRangeError, both an IndexError and a ValueError
    (checked on the host: one sync on GPU).
    Backward: token_scatter of the gradient (deterministic).
    """
    check_tensor("x", x, ndim=2)
    check_tensor("index", index, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device([("x", x), ("index", index)])
    be = _backend(backend, x.device, "token_gather")
    _refuse_float64_gradient(be, "x", x, "token_gather")
    return torch.ops.mmhnet.token_gather(x, index, be)


def token_scatter(y, index, num_rows, *, backend=None):
    """The adjoint of token_gather: y (M, dim), index (M,) in [0, num_rows) -> (num_rows, dim),
    out[r] = sum of y[i] over index[i] == r (0 where none; for a permutation, the inverse
    routing). Summed in a fixed order: deterministic. Backward: token_gather."""
    check_tensor("y", y, ndim=2)
    check_tensor("index", index, shape=(y.shape[0],), dtypes=INDEX_DTYPES)
    check_same_device([("y", y), ("index", index)])
    if not isinstance(num_rows, int) or isinstance(num_rows, bool) or num_rows < 0:
        raise ValueError(f"num_rows must be a non-negative int, got {num_rows!r}")
    check_token_count("num_rows", num_rows, "rows")
    be = _backend(backend, y.device, "token_scatter")
    return torch.ops.mmhnet.token_scatter(y, index, num_rows, be)


def ratio_loss(mask, p, target_ratio, *, backend=None):
    """H-Net's load-balancing loss, N/(N-1) ((N-1) F G + (1-F)(1-G)), N = target_ratio > 1,
    F = mean(mask) (fraction of boundaries), G = mean(p). mask: (T,) bool; p: (T,) float, T > 0.
    Returns a 0-dim float32 tensor (float64 for float64 p); the gradient flows to p only."""
    check_tensor("p", p, ndim=1)
    check_tensor("mask", mask, shape=tuple(p.shape), dtypes=BOOL)
    check_same_device([("mask", mask), ("p", p)])
    check_number("target_ratio", target_ratio, low=1)  # the mean chunk length it aims for
    if p.shape[0] == 0:
        raise ValueError("ratio_loss needs at least one token; p is empty")
    be = _backend(backend, p.device, "ratio_loss")
    return torch.ops.mmhnet.ratio_loss(mask, p, float(target_ratio), be)

