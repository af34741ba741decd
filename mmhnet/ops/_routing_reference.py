"""The "reference" backend of the routing ops: the pure-torch references of
``reference_routing.py`` for the forward passes, and the backwards written out in torch (a custom
op runs below the autograd dispatch key, so autograd cannot differentiate inside it).

Every backend module of the routing ops (``_routing_reference``, ``_routing_triton``,
``_routing_native``) provides the same primitives, which ``_routing_library.py`` composes:

    boundaries(q, k, cu)                      -> p (T,) float, mask (T,) bool, stats: None, or
                                                 (T, 3) float rows (|q_t|, |k_t|, q_t . k_{t-1})
                                                 that the backend's backward reuses
    boundaries_backward(dp, q, k, cu, stats)  -> dq, dk (stats as boundaries returned them)
    chunk_index(mask, cu)                     -> chunk_id (T,) int32, chunk_cu (nseq+1,) int32
    compact_rows(x, mask, chunk_id, C)        -> (C, dim): row chunk_id[t] = x[t] where mask[t]
    expand_rows(src, chunk_id, mask)          -> (T, dim): src[chunk_id[t]], or 0 where mask is
                                                 given and false
    segment_sum(src, seg_id, R, order)        -> (R, dim): row r = sum of src[order[j]] (src[j]
                                                 when order is None) over the j with seg_id[j] = r;
                                                 seg_id non-decreasing; deterministic
    confidence_grad(dz, z_chunks, chunk_id, mask) -> dp (T,): +-sum_d dz[t] z_chunks[chunk_id[t]]
    scatter_backward(dz, z_chunks, chunk_id, mask) -> (segment_sum(dz, chunk_id, C, None),
                                                 confidence_grad or None when mask is None);
                                                 optional, for a backend that fuses the two
                                                 passes; None where it has no fused kernel
    route_index(q, k, cu)                     -> (p, mask, chunk_id, chunk_cu): boundaries and
                                                 chunk_index in one kernel; optional, None
                                                 where the backend has no fused kernel
    ema(z, p, cu, bidirectional)              -> (C, dim)
    ema_backward(de, z, p, cu, bidirectional) -> dz, dp
    gather_rows(x, index)                     -> x[index]
    mask_p_means(mask, p)                     -> (2,) [mean(mask), mean(p)]

``cu`` is always an int32 tensor here (the library turns None into [0, T]); indices are int32
or int64 and already validated.
"""

import torch

from . import reference_routing as ref
from .reference import compute_dtype


NORM_EPS = 1e-12  # F.normalize's eps: x / max(|x|, eps)


def boundaries(q, k, cu):
    return (*ref.route_boundaries_reference(q, k, cu), None)


def _normalize_backward(x, xn, norm, dxn):
    """Backward of xn = x / max(|x|, eps), row-wise."""
    tangent = (dxn - xn * (xn * dxn).sum(-1, keepdim=True)) / norm
    return torch.where(norm > NORM_EPS, tangent, dxn / NORM_EPS)


def boundaries_backward(dp, q, k, cu, stats):
    cd = compute_dtype(q)
    total = q.shape[0]
    qc, kc = q.to(cd), k.to(cd)
    nq = qc.norm(dim=-1, keepdim=True)
    nk = kc.norm(dim=-1, keepdim=True)
    qn, kn = qc / nq.clamp_min(NORM_EPS), kc / nk.clamp_min(NORM_EPS)
    dqn, dkn = torch.zeros_like(qn), torch.zeros_like(kn)
    if total > 1:
        cos = (qn[1:] * kn[:-1]).sum(-1)
        v = (1 - cos) / 2
        # clamp passes the gradient on [0, 1]; sequence starts are constants
        pair = ~ref.sequence_starts(cu, total, q.device)[1:]
        dcos = torch.where((v >= 0) & (v <= 1) & pair, -dp[1:].to(cd) / 2, torch.zeros_like(v))
        # a pair across a sequence start is selected away, not multiplied by 0: the other
        # sequence's row may be NaN
        dqn[1:] = torch.where(pair[:, None], dcos[:, None] * kn[:-1], 0.0)
        dkn[:-1] = torch.where(pair[:, None], dcos[:, None] * qn[1:], 0.0)
    return _normalize_backward(qc, qn, nq, dqn), _normalize_backward(kc, kn, nk, dkn)


def chunk_index(mask, cu):
    _, chunk_cu, chunk_id = ref.chunk_gather_reference(mask[:, None], mask, cu)
    return chunk_id, chunk_cu


def compact_rows(x, mask, chunk_id, num_chunks):
    out = x.new_zeros(num_chunks, x.shape[1])
    out[chunk_id[mask].long()] = x[mask]
    return out


def expand_rows(src, chunk_id, mask):
    out = src.index_select(0, chunk_id.long())
    if mask is not None:  # where, not a product: a NaN row stays in its row
        out = torch.where(mask[:, None], out, torch.zeros_like(out))
    return out


def segment_sum(src, seg_id, num_segments, order):
    rows = src if order is None else src.index_select(0, order.long())
    cd = compute_dtype(src)
    out = torch.zeros(num_segments, src.shape[1], dtype=cd, device=src.device)
    return out.index_add(0, seg_id.long(), rows.to(cd)).to(src.dtype)


def confidence_grad(dz, z_chunks, chunk_id, mask):
    cd = compute_dtype(z_chunks)
    dc = (dz.to(cd) * z_chunks.index_select(0, chunk_id.long()).to(cd)).sum(-1)
    return torch.where(mask, dc, -dc)


def ema(z, p, cu, bidirectional):
    return ref.ema_smooth_reference(z, p, cu, bidirectional)


def _sweep(first, step, longest, reverse):
    """state_c = step(c, state_{c-1}) along the padded chunk axis; returns the list of states."""
    out, state = [None] * longest, first
    for c in (range(longest - 1, -1, -1) if reverse else range(longest)):
        state = step(c, state)
        out[c] = state
    return torch.stack(out, dim=1)


def ema_backward(de, z, p, cu, bidirectional):
    """With a = 1 - p: the adjoint of e (G, right to left) is G_c = de_c + a_{c+1} G_{c+1}, that
    of r (H, left to right) is H_c = dr_c + a_{c-1} H_{c-1}; then dz_c = p_c (G_c + H_c) and
    dp_c = sum_d G_c (z_c - e_{c-1}) + H_c (z_c - r_{c+1})."""
    cd = compute_dtype(z)
    total, dim = z.shape
    layout = ref.padded_layout(cu, total, z.device)
    if layout is None:
        return torch.zeros_like(z), torch.zeros_like(p)
    seq, pos, nseq, longest = layout

    def padded(v, *shape):
        return v.new_zeros(nseq, longest, *shape, dtype=cd).index_put((seq, pos), v.to(cd))

    zp, pp = padded(z, dim), padded(p)
    dout = padded(de, dim) / (2 if bidirectional else 1)
    a = 1 - pp
    zero = zp.new_zeros(nseq, dim)
    # e_{c-1} and G_c; padding (p = z = dout = 0) follows each sequence's end
    e_prev = _sweep(zero, lambda c, s: s if c == 0 else pp[:, c - 1, None] * zp[:, c - 1]
                    + a[:, c - 1, None] * s, longest, False)
    G = _sweep(zero, lambda c, s: dout[:, c] + (0 if c == longest - 1 else a[:, c + 1, None] * s),
               longest, True)
    dz = pp[..., None] * G
    dp = (G * (zp - e_prev)).sum(-1)
    if bidirectional:
        r_next = _sweep(zero, lambda c, s: s if c == longest - 1 else pp[:, c + 1, None]
                        * zp[:, c + 1] + a[:, c + 1, None] * s, longest, True)
        H = _sweep(zero, lambda c, s: dout[:, c] + (0 if c == 0 else a[:, c - 1, None] * s),
                   longest, False)
        dz = dz + pp[..., None] * H
        dp = dp + (H * (zp - r_next)).sum(-1)
    return dz[seq, pos].to(z.dtype), dp[seq, pos].to(p.dtype)


def gather_rows(x, index):
    return ref.token_gather_reference(x, index)


def mask_p_means(mask, p):
    cd = compute_dtype(p)
    return torch.stack([mask.to(cd).mean(), p.to(cd).mean()])
