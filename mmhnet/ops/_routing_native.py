"""The "cpu" and "cuda" backends of the routing ops: the primitives of ``_routing_reference.py``
mapped onto mmhnet._C (CPU tensors) and mmhnet._C_cuda (CUDA tensors; the current stream is
passed along). Buffers are made contiguous and handed over by address; per-token floats travel
in the compute dtype (float64 for float64 rows, else float32)."""

import torch

from mmhnet._alloc import empty

from ._backend import native_module
from .reference import compute_dtype as _cd

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _call(name, device, *args):
    if device.type == "cuda":
        # the tensors' device current: the kernels and their scratch allocations run there
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device).cuda_stream
            return getattr(native_module("_C_cuda"), name)(*args, stream)
    return getattr(native_module("_C"), name)(*args)


def _addr(t):
    return 0 if t is None else t.data_ptr()


def _index(t):
    """(contiguous index tensor, is64); other integer dtypes become int64."""
    if t.dtype not in (torch.int32, torch.int64):
        t = t.long()
    return t.contiguous(), t.dtype == torch.int64


def boundaries(q, k, cu):
    """On CPU also the (T, 3) statistics the backward reuses; None on CUDA."""
    q, k = q.contiguous(), k.contiguous()
    total, dim = q.shape
    p = empty((total,), _cd(q), q.device)
    mask = torch.empty(total, dtype=torch.bool, device=q.device)
    args = [q.data_ptr(), k.data_ptr(), cu.data_ptr(), cu.shape[0] - 1, total, dim,
            DTYPE_CODES[q.dtype], p.data_ptr(), mask.data_ptr()]
    stats = None
    if q.device.type == "cpu":
        stats = empty((total, 3), _cd(q), q.device)
        args.append(stats.data_ptr())
    _call("routing_boundaries", q.device, *args)
    return p, mask, stats


def boundaries_backward(dp, q, k, cu, stats):
    q, k = q.contiguous(), k.contiguous()
    dp = dp.to(_cd(q)).contiguous()
    dq, dk = empty(q.shape, q.dtype, q.device), empty(k.shape, k.dtype, k.device)
    args = [dp.data_ptr(), q.data_ptr(), k.data_ptr(), cu.data_ptr(), cu.shape[0] - 1,
            q.shape[0], q.shape[1], DTYPE_CODES[q.dtype]]
    if q.device.type == "cpu":
        if stats is None:
            stats = boundaries(q, k, cu)[2]
        args.append(stats.contiguous().data_ptr())
    _call("routing_boundaries_bwd", q.device, *args, dq.data_ptr(), dk.data_ptr())
    return dq, dk


def chunk_index(mask, cu):
    mask = mask.contiguous()
    total = mask.shape[0]
    chunk_id = empty((total,), torch.int32, mask.device)
    chunk_cu = empty(cu.shape, torch.int32, mask.device)
    _call("routing_chunk_index", mask.device, mask.data_ptr(), cu.contiguous().data_ptr(),
          cu.shape[0] - 1, total, chunk_id.data_ptr(), chunk_cu.data_ptr())
    return chunk_id, chunk_cu


def route_index(q, k, cu):
    """route_boundaries and chunk_index in one kernel: (p, mask, chunk_id, chunk_cu) on CUDA;
    None on CPU, which has no fused kernel (the library then runs boundaries and chunk_index)."""
    if q.device.type != "cuda":
        return None
    q, k = q.contiguous(), k.contiguous()
    total, dim = q.shape
    p = empty((total,), _cd(q), q.device)
    mask = torch.empty(total, dtype=torch.bool, device=q.device)
    chunk_id = empty((total,), torch.int32, q.device)
    chunk_cu = empty(cu.shape, torch.int32, q.device)
    _call("routing_route_index", q.device, q.data_ptr(), k.data_ptr(), cu.contiguous().data_ptr(),
          cu.shape[0] - 1, total, dim, DTYPE_CODES[q.dtype], p.data_ptr(), mask.data_ptr(),
          chunk_id.data_ptr(), chunk_cu.data_ptr())
    return p, mask, chunk_id, chunk_cu


def compact_rows(x, mask, chunk_id, num_chunks):
    x = x.contiguous()
    out = empty((num_chunks, x.shape[1]), x.dtype, x.device)
    _call("routing_compact_rows", x.device, x.data_ptr(), mask.contiguous().data_ptr(),
          chunk_id.contiguous().data_ptr(), x.shape[0], num_chunks,
          x.shape[1] * x.element_size(), out.data_ptr())
    return out


def _gather(src, index, keep):
    src = src.contiguous()
    index, is64 = _index(index)
    out = empty((index.shape[0], src.shape[1]), src.dtype, src.device)
    _call("routing_gather_rows", src.device, src.data_ptr(), index.data_ptr(), is64,
          _addr(None if keep is None else keep.contiguous()), index.shape[0], src.shape[0],
          src.shape[1] * src.element_size(), out.data_ptr())
    return out


def expand_rows(src, chunk_id, mask):
    return _gather(src, chunk_id, mask)


def gather_rows(x, index):
    return _gather(x, index, None)


def segment_sum(src, seg_id, num_segments, order):
    src = src.contiguous()
    seg_id, is64 = _index(seg_id)
    order = None if order is None else order.long().contiguous()
    dense = order is None  # every segment has a row; else the kernels zero the empty ones
    out = empty((num_segments, src.shape[1]), src.dtype, src.device)
    _call("routing_segment_sum", src.device, src.data_ptr(), seg_id.data_ptr(), is64,
          _addr(order), seg_id.shape[0], num_segments, src.shape[1], DTYPE_CODES[src.dtype],
          dense, out.data_ptr())
    return out


def confidence_grad(dz, z_chunks, chunk_id, mask):
    """CUDA only: on CPU scatter_backward computes it in the segment sum's pass."""
    dz, z_chunks = dz.contiguous(), z_chunks.contiguous()
    if dz.dtype != z_chunks.dtype:
        dz = dz.to(z_chunks.dtype)
    chunk_id, is64 = _index(chunk_id)
    dp = empty((dz.shape[0],), _cd(z_chunks), dz.device)
    _call("routing_confidence_grad", dz.device, dz.data_ptr(), z_chunks.data_ptr(),
          chunk_id.data_ptr(), is64, mask.contiguous().data_ptr(), dz.shape[0],
          z_chunks.shape[0], z_chunks.shape[1], DTYPE_CODES[z_chunks.dtype], dp.data_ptr())
    return dp


def scatter_backward(dz, z_chunks, chunk_id, mask):
    """chunk_scatter's backward: (per-chunk sums of dz, confidence gradient or None), one pass
    over dz on CPU; None on CUDA, which has no fused kernel (the library then runs segment_sum
    and confidence_grad)."""
    if dz.device.type != "cpu":
        return None
    z_chunks = z_chunks.contiguous()
    dz = dz.to(z_chunks.dtype).contiguous()
    chunk_id, is64 = _index(chunk_id)
    dz_chunks = empty(z_chunks.shape, z_chunks.dtype, dz.device)
    dp = None if mask is None else empty((dz.shape[0],), _cd(z_chunks), dz.device)
    _call("routing_scatter_backward", dz.device, dz.data_ptr(), chunk_id.data_ptr(), is64,
          dz.shape[0], z_chunks.shape[0], z_chunks.shape[1], DTYPE_CODES[z_chunks.dtype],
          z_chunks.data_ptr(), _addr(None if mask is None else mask.contiguous()),
          dz_chunks.data_ptr(), _addr(dp))
    return dz_chunks, dp


def ema(z, p, cu, bidirectional):
    z = z.contiguous()
    p = p.to(_cd(z)).contiguous()
    out = empty(z.shape, z.dtype, z.device)
    _call("routing_ema", z.device, z.data_ptr(), p.data_ptr(), cu.data_ptr(), cu.shape[0] - 1,
          z.shape[0], z.shape[1], DTYPE_CODES[z.dtype], bidirectional, out.data_ptr())
    return out


def ema_backward(de, z, p, cu, bidirectional):
    z = z.contiguous()
    de = de.to(z.dtype).contiguous()
    p = p.to(_cd(z)).contiguous()
    dz = empty(z.shape, z.dtype, z.device)
    dp = empty(p.shape, p.dtype, z.device)
    _call("routing_ema_bwd", z.device, de.data_ptr(), z.data_ptr(), p.data_ptr(), cu.data_ptr(),
          cu.shape[0] - 1, z.shape[0], z.shape[1], DTYPE_CODES[z.dtype], bidirectional,
          dz.data_ptr(), dp.data_ptr())
    return dz, dp


def mask_p_means(mask, p):
    cd = _cd(p)
    p = p.to(cd).contiguous()
    out = empty((2,), cd, p.device)
    _call("routing_mask_p_means", p.device, mask.contiguous().data_ptr(), p.data_ptr(),
          p.shape[0], DTYPE_CODES[cd], out.data_ptr())
    return out
