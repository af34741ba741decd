"""torch.library registration of the routing ops: custom_op + register_fake + register_autograd.

Each custom op takes the backend name as its last argument and calls that backend's primitives
(see ``_routing_reference.py`` for the list). Value checks that read tensor data (cu_seqlens,
indices) run here, inside the ops, where reading data is allowed under torch.compile.
"""

import importlib
from typing import Optional, Tuple

import torch

from ._checks import IndexOutOfRangeError, check_cu_seqlens_values, check_same_dtype
from .reference import compute_dtype


def backend_module(backend):
    module = "native" if backend in ("cpu", "cuda") else backend
    return importlib.import_module(f"mmhnet.ops._routing_{module}")


def _offsets(cu_seqlens, total, device):
    """Contiguous int32 offsets; None -> one sequence [0, total]."""
    if cu_seqlens is None:
        return torch.tensor([0, total], dtype=torch.int32, device=device)
    return cu_seqlens.to(torch.int32).contiguous()


def _dense(*tensors):
    """The ops' 1-D arguments (masks, ids, indices, p) contiguous: the kernels take them by
    address, without strides."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _check_indices(name, index, size, what):
    """Host-side check (one sync on GPU) that every index lies in [0, size)."""
    if index.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(index)).tolist()  # one transfer
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise IndexOutOfRangeError(f"{name} holds {bad}, outside [0, {size}) ({what})")


def check_chunk_id_values(chunk_id, num_chunks):
    """chunk_id as chunk_gather makes it: starts at 0, steps of 0 or 1, ends at num_chunks - 1."""
    if chunk_id.numel() == 0:
        if num_chunks != 0:
            raise ValueError(f"chunk_id is empty but z_chunks has {num_chunks} rows")
        return
    ids = chunk_id.long()
    if int(ids[0]) != 0:
        raise ValueError(f"chunk_id must start at 0, got {int(ids[0])}")
    steps = ids[1:] - ids[:-1]
    if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > 1):
        raise ValueError("chunk_id must be non-decreasing in steps of 0 or 1, as chunk_gather "
                         "returns it")
    if int(ids[-1]) != num_chunks - 1:
        raise ValueError(f"chunk_id ends at {int(ids[-1])} but z_chunks has {num_chunks} rows; "
                         f"they must come from the same chunk_gather call")


# ----------------------------------------------------------------------------------------------
# route_boundaries
# ----------------------------------------------------------------------------------------------

# The ops return, after p and mask, the per-token statistics (T, 3) that the backend's backward
# reuses ((|q_t|, |k_t|, q_t . k_{t-1}); the cpu backend keeps them), or an empty tensor where
# the backward recomputes them. The public functions drop them.

def _stats_or_empty(stats, q):
    return q.new_empty(0, dtype=compute_dtype(q)) if stats is None else stats


def _fake_stats(q, backend):
    return q.new_empty((q.shape[0], 3) if backend == "cpu" else (0,), dtype=compute_dtype(q))


@torch.library.custom_op("mmhnet::route_boundaries", mutates_args=())
def _route_boundaries(q: torch.Tensor, k: torch.Tensor, cu_seqlens: Optional[torch.Tensor],
                      backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    total = q.shape[0]
    check_same_dtype("k", k, "q", q)
    check_cu_seqlens_values(cu_seqlens, total)
    p, mask, stats = backend_module(backend).boundaries(q, k, _offsets(cu_seqlens, total,
                                                                       q.device))
    return p, mask, _stats_or_empty(stats, q)


@_route_boundaries.register_fake
def _(q, k, cu_seqlens, backend):
    return (q.new_empty(q.shape[0], dtype=compute_dtype(q)),
            q.new_empty(q.shape[0], dtype=torch.bool), _fake_stats(q, backend))


@torch.library.custom_op("mmhnet::route_boundaries_bwd", mutates_args=())
def _route_boundaries_bwd(dp: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                          cu_seqlens: Optional[torch.Tensor], stats: torch.Tensor, backend: str
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    check_same_dtype("k", k, "q", q)
    cu = _offsets(cu_seqlens, q.shape[0], q.device)
    if stats.numel() and (stats.shape != (q.shape[0], 3) or stats.dtype != compute_dtype(q)
                          or stats.device != q.device):
        raise ValueError(f"stats must be empty or route_boundaries' ({q.shape[0]}, 3) "
                         f"{compute_dtype(q)} statistics on {q.device}, got "
                         f"{tuple(stats.shape)} {stats.dtype} on {stats.device}")
    dq, dk = backend_module(backend).boundaries_backward(
        dp.contiguous(), q, k, cu, stats if stats.numel() else None)
    return dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous()


@_route_boundaries_bwd.register_fake
def _(dp, q, k, cu_seqlens, stats, backend):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _route_setup(ctx, inputs, output):
    q, k, cu_seqlens, backend = inputs
    ctx.save_for_backward(q, k, cu_seqlens, output[2])
    ctx.backend = backend


def _route_backward(ctx, dp, dmask, dstats):
    q, k, cu_seqlens, stats = ctx.saved_tensors
    dq, dk = torch.ops.mmhnet.route_boundaries_bwd(dp, q, k, cu_seqlens, stats, ctx.backend)
    return dq, dk, None, None


torch.library.register_autograd("mmhnet::route_boundaries", _route_backward,
                                setup_context=_route_setup)


# ----------------------------------------------------------------------------------------------
# chunk_gather (one host sync) and its backward, chunk_expand
# ----------------------------------------------------------------------------------------------

def _read_sizes_once(cu, chunk_cu, mask):
    """The single host sync of chunk_gather: cu_seqlens (to validate it), the chunk count and the
    number of non-empty sequences whose first token is not a boundary, in one transfer."""
    total = mask.shape[0]
    if total > 0:
        first = cu[:-1].clamp(0, total - 1).long()
        nonempty = cu[1:] > cu[:-1]
        missing = (nonempty & ~mask[first]).sum().view(1)
    else:
        missing = torch.zeros(1, dtype=torch.int64, device=mask.device)
    host = torch.cat([cu.long(), chunk_cu[-1:].long(), missing.long()]).cpu()
    return host[:-2], int(host[-2]), int(host[-1])


def _compact(impl, x, p, mask, chunk_id, num_chunks):
    """The boundary rows of x and, unless p is None, of p (else an empty p_chunks)."""
    x_chunks = impl.compact_rows(x, mask, chunk_id, num_chunks)
    p_chunks = (x.new_empty(0) if p is None
                else impl.compact_rows(p[:, None], mask, chunk_id, num_chunks)[:, 0])
    return x_chunks, p_chunks


def _expand(dx_chunks, dp_chunks, chunk_id, mask, backend):
    """chunk_gather's backward: the gradients of x_chunks and (unless dp_chunks is None)
    p_chunks scattered back into the boundary rows, zero elsewhere."""
    mm = torch.ops.mmhnet
    dx = mm.chunk_expand(dx_chunks, chunk_id, mask, backend)
    dp = (None if dp_chunks is None
          else mm.chunk_expand(dp_chunks[:, None], chunk_id, mask, backend)[:, 0])
    return dx, dp


@torch.library.custom_op("mmhnet::chunk_gather", mutates_args=())
def _chunk_gather(x: torch.Tensor, mask: torch.Tensor, cu_seqlens: Optional[torch.Tensor],
                  p: Optional[torch.Tensor], backend: str
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = backend_module(backend)
    total = x.shape[0]
    mask, p = _dense(mask, p)
    cu = _offsets(cu_seqlens, total, x.device)
    # clamped, so that a bad cu_seqlens is reported by the check below instead of read out of
    # bounds by a kernel
    chunk_id, chunk_cu = impl.chunk_index(mask, cu.clamp(0, total))
    host_cu, num_chunks, missing = _read_sizes_once(cu, chunk_cu, mask)
    check_cu_seqlens_values(host_cu if cu_seqlens is not None else None, total)
    if missing:
        raise ValueError(f"mask must be True at the first token of every non-empty sequence "
                         f"(route_boundaries guarantees it); {missing} sequence(s) start without "
                         f"a boundary")
    x_chunks, p_chunks = _compact(impl, x, p, mask, chunk_id, num_chunks)
    return x_chunks, chunk_cu, chunk_id, p_chunks


@_chunk_gather.register_fake
def _(x, mask, cu_seqlens, p, backend):
    num_chunks = torch.library.get_ctx().new_dynamic_size()
    nseq = 1 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    x_chunks = x.new_empty(num_chunks, x.shape[1])
    chunk_cu = x.new_empty(nseq + 1, dtype=torch.int32)
    chunk_id = x.new_empty(x.shape[0], dtype=torch.int32)
    p_chunks = x.new_empty(0) if p is None else p.new_empty(num_chunks)
    return x_chunks, chunk_cu, chunk_id, p_chunks


@torch.library.custom_op("mmhnet::chunk_expand", mutates_args=())
def _chunk_expand(src: torch.Tensor, chunk_id: torch.Tensor, mask: Optional[torch.Tensor],
                  backend: str) -> torch.Tensor:
    """out[t] = src[chunk_id[t]] where mask[t] (or everywhere when mask is None), else 0."""
    return backend_module(backend).expand_rows(src.contiguous(), *_dense(chunk_id, mask))


@_chunk_expand.register_fake
def _(src, chunk_id, mask, backend):
    return src.new_empty(chunk_id.shape[0], src.shape[1])


def _gather_setup(ctx, inputs, output):
    x, mask, cu_seqlens, p, backend = inputs
    ctx.save_for_backward(mask, output[2])
    ctx.has_p = p is not None
    ctx.backend = backend


def _gather_backward(ctx, dx_chunks, dchunk_cu, dchunk_id, dp_chunks):
    mask, chunk_id = ctx.saved_tensors
    dx, dp = _expand(dx_chunks, dp_chunks if ctx.has_p else None, chunk_id, mask, ctx.backend)
    return dx, None, None, dp, None


torch.library.register_autograd("mmhnet::chunk_gather", _gather_backward,
                                setup_context=_gather_setup)


# ----------------------------------------------------------------------------------------------
# route_and_gather: route_boundaries + chunk_gather(p=p) as one op (one fused kernel on CUDA)
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mmhnet::route_and_gather", mutates_args=())
def _route_and_gather(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor,
                      cu_seqlens: Optional[torch.Tensor], backend: str
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = backend_module(backend)
    total = q.shape[0]
    check_same_dtype("k", k, "q", q)
    check_cu_seqlens_values(cu_seqlens, total)
    cu = _offsets(cu_seqlens, total, q.device)
    fused = getattr(impl, "route_index", None)
    routed = fused(q, k, cu) if fused else None
    stats = None
    if routed is None:
        p, mask, stats = impl.boundaries(q, k, cu)
        routed = (p, mask) + tuple(impl.chunk_index(mask, cu))
    p, mask, chunk_id, chunk_cu = routed
    num_chunks = int(chunk_cu[-1])  # the host sync that sizes x_chunks
    x_chunks, p_chunks = _compact(impl, x, p, mask, chunk_id, num_chunks)
    return p, mask, x_chunks, chunk_cu, chunk_id, p_chunks, _stats_or_empty(stats, q)


@_route_and_gather.register_fake
def _(q, k, x, cu_seqlens, backend):
    num_chunks = torch.library.get_ctx().new_dynamic_size()
    total = q.shape[0]
    nseq = 1 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    pdt = compute_dtype(q)
    return (q.new_empty(total, dtype=pdt), q.new_empty(total, dtype=torch.bool),
            x.new_empty(num_chunks, x.shape[1]), q.new_empty(nseq + 1, dtype=torch.int32),
            q.new_empty(total, dtype=torch.int32), q.new_empty(num_chunks, dtype=pdt),
            _fake_stats(q, backend))


def _route_gather_setup(ctx, inputs, output):
    q, k, x, cu_seqlens, backend = inputs
    ctx.save_for_backward(q, k, cu_seqlens, output[1], output[4], output[6])
    ctx.backend = backend


def _route_gather_backward(ctx, dp, dmask, dx_chunks, dchunk_cu, dchunk_id, dp_chunks, dstats):
    q, k, cu_seqlens, mask, chunk_id, stats = ctx.saved_tensors
    dx, dp_gathered = _expand(dx_chunks, dp_chunks, chunk_id, mask, ctx.backend)
    # p reaches the loss directly and through p_chunks = p[mask]
    dq, dk = torch.ops.mmhnet.route_boundaries_bwd(dp + dp_gathered, q, k, cu_seqlens, stats,
                                                  ctx.backend)
    return dq, dk, dx, None, None


torch.library.register_autograd("mmhnet::route_and_gather", _route_gather_backward,
                                setup_context=_route_gather_setup)


# ----------------------------------------------------------------------------------------------
# chunk_scatter (with the optional confidence straight-through estimator)
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mmhnet::chunk_scatter", mutates_args=())
def _chunk_scatter(z_chunks: torch.Tensor, chunk_id: torch.Tensor, p: Optional[torch.Tensor],
                   mask: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    chunk_id = chunk_id.contiguous()
    if chunk_id.device.type == "cpu":
        check_chunk_id_values(chunk_id, z_chunks.shape[0])
    # the straight-through factor is exactly 1 in the forward pass
    return backend_module(backend).expand_rows(z_chunks, chunk_id, None)


@_chunk_scatter.register_fake
def _(z_chunks, chunk_id, p, mask, backend):
    return z_chunks.new_empty(chunk_id.shape[0], z_chunks.shape[1])


@torch.library.custom_op("mmhnet::chunk_scatter_bwd", mutates_args=())
def _chunk_scatter_bwd(dz: torch.Tensor, z_chunks: torch.Tensor, chunk_id: torch.Tensor,
                       p: Optional[torch.Tensor], mask: Optional[torch.Tensor], backend: str
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    impl = backend_module(backend)
    dz = dz.contiguous()
    chunk_id, p, mask = _dense(chunk_id, p, mask)
    fused = getattr(impl, "scatter_backward", None)
    grads = fused(dz, z_chunks, chunk_id, mask) if fused else None
    if grads is None:
        grads = (impl.segment_sum(dz, chunk_id, z_chunks.shape[0], None),
                 None if p is None else impl.confidence_grad(dz, z_chunks, chunk_id, mask))
    dz_chunks, dp = grads
    dz_chunks = dz_chunks.to(z_chunks.dtype).contiguous()
    return dz_chunks, dz.new_empty(0) if p is None else dp.to(p.dtype).contiguous()


@_chunk_scatter_bwd.register_fake
def _(dz, z_chunks, chunk_id, p, mask, backend):
    return (torch.empty_like(z_chunks, memory_format=torch.contiguous_format),
            dz.new_empty(0) if p is None else torch.empty_like(p, memory_format=torch.contiguous_format))


def _scatter_setup(ctx, inputs, output):
    z_chunks, chunk_id, p, mask, backend = inputs
    ctx.save_for_backward(z_chunks, chunk_id, p, mask)
    ctx.backend = backend


def _scatter_backward(ctx, dz):
    z_chunks, chunk_id, p, mask = ctx.saved_tensors
    dz_chunks, dp = torch.ops.mmhnet.chunk_scatter_bwd(dz, z_chunks, chunk_id, p, mask,
                                                       ctx.backend)
    return dz_chunks, None, (None if p is None else dp), None, None


torch.library.register_autograd("mmhnet::chunk_scatter", _scatter_backward,
                                setup_context=_scatter_setup)


# ----------------------------------------------------------------------------------------------
# ema_smooth
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mmhnet::ema_smooth", mutates_args=())
def _ema_smooth(z_chunks: torch.Tensor, p_chunks: torch.Tensor,
                chunk_cu_seqlens: Optional[torch.Tensor], bidirectional: bool,
                backend: str) -> torch.Tensor:
    total = z_chunks.shape[0]
    check_cu_seqlens_values(chunk_cu_seqlens, total, name="chunk_cu_seqlens")
    cu = _offsets(chunk_cu_seqlens, total, z_chunks.device)
    return backend_module(backend).ema(z_chunks.contiguous(), p_chunks.contiguous(), cu,
                                       bidirectional)


@_ema_smooth.register_fake
def _(z_chunks, p_chunks, chunk_cu_seqlens, bidirectional, backend):
    return torch.empty_like(z_chunks, memory_format=torch.contiguous_format)


@torch.library.custom_op("mmhnet::ema_smooth_bwd", mutates_args=())
def _ema_smooth_bwd(de: torch.Tensor, z_chunks: torch.Tensor, p_chunks: torch.Tensor,
                    chunk_cu_seqlens: Optional[torch.Tensor], bidirectional: bool,
                    backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    cu = _offsets(chunk_cu_seqlens, z_chunks.shape[0], z_chunks.device)
    dz, dp = backend_module(backend).ema_backward(de.contiguous(), z_chunks.contiguous(),
                                                  p_chunks.contiguous(), cu, bidirectional)
    return dz.to(z_chunks.dtype), dp.to(p_chunks.dtype)


@_ema_smooth_bwd.register_fake
def _(de, z_chunks, p_chunks, chunk_cu_seqlens, bidirectional, backend):
    return (torch.empty_like(z_chunks, memory_format=torch.contiguous_format),
            torch.empty_like(p_chunks, memory_format=torch.contiguous_format))


def _ema_setup(ctx, inputs, output):
    z_chunks, p_chunks, chunk_cu_seqlens, bidirectional, backend = inputs
    ctx.save_for_backward(z_chunks, p_chunks, chunk_cu_seqlens)
    ctx.flags = (bidirectional, backend)


def _ema_backward(ctx, de):
    z_chunks, p_chunks, chunk_cu_seqlens = ctx.saved_tensors
    dz, dp = torch.ops.mmhnet.ema_smooth_bwd(de, z_chunks, p_chunks, chunk_cu_seqlens,
                                             *ctx.flags)
    return dz, dp, None, None, None


torch.library.register_autograd("mmhnet::ema_smooth", _ema_backward, setup_context=_ema_setup)


# ----------------------------------------------------------------------------------------------
# token_gather / token_scatter: each one's backward is the other
# ----------------------------------------------------------------------------------------------

def _scatter_add(impl, y, index, num_rows):
    """out[r] = sum of y[i] over index[i] == r, in a fixed order (a stable sort of index)."""
    sorted_index, order = torch.sort(index, stable=True)
    return impl.segment_sum(y.contiguous(), sorted_index, num_rows, order)


@torch.library.custom_op("mmhnet::token_gather", mutates_args=())
def _token_gather(x: torch.Tensor, index: torch.Tensor, backend: str) -> torch.Tensor:
    _check_indices("index", index, x.shape[0], "token_gather reads rows x[index]")
    return backend_module(backend).gather_rows(x.contiguous(), *_dense(index))


@_token_gather.register_fake
def _(x, index, backend):
    return x.new_empty(index.shape[0], x.shape[1])


@torch.library.custom_op("mmhnet::token_scatter", mutates_args=())
def _token_scatter(y: torch.Tensor, index: torch.Tensor, num_rows: int,
                   backend: str) -> torch.Tensor:
    _check_indices("index", index, num_rows, "token_scatter writes rows out[index]")
    return _scatter_add(backend_module(backend), y, index, num_rows)


@_token_scatter.register_fake
def _(y, index, num_rows, backend):
    return y.new_empty(num_rows, y.shape[1])


def _token_gather_setup(ctx, inputs, output):
    x, index, backend = inputs
    ctx.save_for_backward(index)
    ctx.num_rows, ctx.backend = x.shape[0], backend


def _token_gather_backward(ctx, dy):
    (index,) = ctx.saved_tensors
    return torch.ops.mmhnet.token_scatter(dy, index, ctx.num_rows, ctx.backend), None, None


def _token_scatter_setup(ctx, inputs, output):
    y, index, num_rows, backend = inputs
    ctx.save_for_backward(index)
    ctx.backend = backend


def _token_scatter_backward(ctx, dout):
    (index,) = ctx.saved_tensors
    return torch.ops.mmhnet.token_gather(dout, index, ctx.backend), None, None, None


torch.library.register_autograd("mmhnet::token_gather", _token_gather_backward,
                                setup_context=_token_gather_setup)
torch.library.register_autograd("mmhnet::token_scatter", _token_scatter_backward,
                                setup_context=_token_scatter_setup)


# ----------------------------------------------------------------------------------------------
# ratio_loss
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mmhnet::ratio_loss", mutates_args=())
def _ratio_loss(mask: torch.Tensor, p: torch.Tensor, target_ratio: float,
                backend: str) -> torch.Tensor:
    n = target_ratio
    f, g = backend_module(backend).mask_p_means(*_dense(mask, p)).unbind()
    return n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g))


@_ratio_loss.register_fake
def _(mask, p, target_ratio, backend):
    return p.new_empty((), dtype=compute_dtype(p))


def _ratio_setup(ctx, inputs, output):
    mask, p, target_ratio, backend = inputs
    ctx.save_for_backward(mask)
    ctx.target_ratio, ctx.p_dtype = target_ratio, p.dtype


def _ratio_backward(ctx, dloss):
    (mask,) = ctx.saved_tensors
    n, total = ctx.target_ratio, mask.shape[0]
    f = mask.to(dloss.dtype).mean()
    # d loss / d G = N/(N-1) ((N-1) F - (1 - F)); G = mean(p)
    dg = n / (n - 1) * ((n - 1) * f - (1 - f))
    dp = (dloss * dg / total).expand(total).to(ctx.p_dtype)
    return None, dp, None, None


torch.library.register_autograd("mmhnet::ratio_loss", _ratio_backward, setup_context=_ratio_setup)
