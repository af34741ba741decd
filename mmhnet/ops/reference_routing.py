"""Pure-PyTorch references of the dynamic chunking and routing ops (DESIGN.md, "Op 2").

These are the ground truth of the tests and the "reference" backend of ``mmhnet.ops.routing``.
They are plain torch code, differentiable by torch autograd, and float64-capable: arithmetic is
float64 for float64 inputs, else float32.

Packed layout: tokens are rows of a ``(total_tokens, dim)`` tensor; ``cu_seqlens`` (int32 or
int64, ``(nseq + 1,)``, starting at 0, non-decreasing, ending at total_tokens) marks where each
sequence starts. ``cu_seqlens=None`` means one sequence holding every token.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "EMA_P_MIN",
    "route_boundaries_reference",
    "chunk_gather_reference",
    "chunk_scatter_reference",
    "confidence",
    "straight_through_ones",
    "ema_smooth_reference",
    "token_gather_reference",
    "token_scatter_reference",
    "ratio_loss_reference",
    "sequence_starts",
]


# ema_smooth clamps its rates to [EMA_P_MIN, 1 - EMA_P_MIN] (DESIGN.md, as H-Net's dechunking)
EMA_P_MIN = 1e-4


def _compute_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _offsets(cu_seqlens, total, device):
    if cu_seqlens is None:
        return torch.tensor([0, total], dtype=torch.int64, device=device)
    return cu_seqlens.to(device=device, dtype=torch.int64)


def sequence_starts(cu_seqlens, total, device):
    """Bool (total,): True at the first token of every non-empty sequence."""
    cu = _offsets(cu_seqlens, total, device)
    starts = torch.zeros(total, dtype=torch.bool, device=device)
    first = cu[:-1][cu[:-1] < cu[1:]]
    starts[first] = True
    return starts


def route_boundaries_reference(q, k, cu_seqlens=None):
    """Boundary probabilities and mask. q, k (T, dim) -> p (T,) float32/float64, mask (T,) bool.

    p_t = clamp((1 - cos(q_t, k_{t-1})) / 2, 0, 1) inside a sequence, p_t = 1 at its first
    token; mask_t = p_t > 0.5 (a tie at exactly 0.5 is not a boundary).
    """
    cd = _compute_dtype(q)
    total = q.shape[0]
    qn = F.normalize(q.to(cd), dim=-1)
    kn = F.normalize(k.to(cd), dim=-1)
    cos = torch.zeros(total, dtype=cd, device=q.device)
    if total > 1:
        cos = torch.cat([cos[:1], (qn[1:] * kn[:-1]).sum(-1)])
    p = torch.clamp((1 - cos) / 2, 0.0, 1.0)
    p = torch.where(sequence_starts(cu_seqlens, total, q.device), torch.ones_like(p), p)
    return p, p > 0.5


def chunk_gather_reference(x, mask, cu_seqlens=None):
    """Compaction. x (T, dim), mask (T,) bool -> (x_chunks (C, dim), chunk_cu_seqlens (nseq+1,)
    int32, chunk_id (T,) int32) with C = mask.sum(); chunk_id[t] = (#boundaries at or before t) - 1.
    """
    cu = _offsets(cu_seqlens, x.shape[0], x.device)
    m = mask.to(torch.int64)
    chunk_id = torch.cumsum(m, 0) - 1
    before = torch.cat([m.new_zeros(1), torch.cumsum(m, 0)])  # boundaries strictly before t
    chunk_cu = before[cu]
    return x[mask], chunk_cu.to(torch.int32), chunk_id.to(torch.int32)


def padded_layout(cu_seqlens, total, device):
    """Where each packed row goes in a (nseq, longest) padded batch: (seq, pos, nseq, longest),
    seq and pos (total,) int64; None when there are no rows."""
    cu = _offsets(cu_seqlens, total, device)
    lengths = (cu[1:] - cu[:-1]).tolist()
    nseq, longest = len(lengths), max(lengths, default=0)
    if total == 0 or longest == 0:
        return None
    seq = torch.repeat_interleave(torch.arange(nseq, device=device),
                                  torch.tensor(lengths, device=device))
    pos = torch.arange(total, device=device) - cu[:-1][seq]
    return seq, pos, nseq, longest


def straight_through_ones(c):
    """Exactly 1 in the forward pass, gradient passed through to c."""
    return (c - c.detach()) + 1


def confidence(p, mask):
    """H-Net's confidence of the routing decision: p where a boundary, else 1 - p."""
    return torch.where(mask, p, 1 - p)


def chunk_scatter_reference(z_chunks, chunk_id, p=None, mask=None):
    """De-chunking. z_chunks (C, dim), chunk_id (T,) -> z (T, dim), z_t = z_chunks[chunk_id[t]].

    With p (T,) and mask (T,) the output is multiplied by straight_through_ones(confidence):
    the value is unchanged and the gradient reaches p.
    """
    z = z_chunks.index_select(0, chunk_id.long())
    if p is None:
        return z
    ste = straight_through_ones(confidence(p.to(_compute_dtype(z)), mask))
    return (z.to(ste.dtype) * ste[:, None]).to(z.dtype)


def ema_smooth_reference(z_chunks, p_chunks, chunk_cu_seqlens=None, bidirectional=False):
    """EMA over chunks, restarting at each sequence. z_chunks (C, dim), p_chunks (C,) -> (C, dim).

    p = p_chunks clamped to [EMA_P_MIN, 1 - EMA_P_MIN] (in the compute dtype; the clamp passes
    no gradient outside that range), then
    forward:  e_c = p_c z_c + (1 - p_c) e_{c-1},  e = 0 before a sequence's first chunk;
    reverse:  r_c = p_c z_c + (1 - p_c) r_{c+1},  r = 0 after its last chunk;
    returns e, or (e + r) / 2 when bidirectional.
    Sequential over the chunk index, vectorised over the sequences (padded).
    """
    cd = _compute_dtype(z_chunks)
    p_chunks = p_chunks.to(cd).clamp(EMA_P_MIN, 1 - EMA_P_MIN)
    total, dim = z_chunks.shape
    layout = padded_layout(chunk_cu_seqlens, total, z_chunks.device)
    if layout is None:
        return z_chunks.new_zeros(total, dim)
    seq, pos, nseq, longest = layout
    zp = z_chunks.new_zeros(nseq, longest, dim, dtype=cd).index_put((seq, pos), z_chunks.to(cd))
    pp = z_chunks.new_zeros(nseq, longest, dtype=cd).index_put((seq, pos), p_chunks.to(cd))

    def sweep(order):
        state = zp.new_zeros(nseq, dim)
        out = [None] * longest
        for c in order:
            # padding (p = 0, z = 0) lies only after a sequence's end, where it keeps the state
            # at zero for the reverse sweep and is never read by the forward one
            state = pp[:, c, None] * zp[:, c] + (1 - pp[:, c, None]) * state
            out[c] = state
        return torch.stack(out, dim=1)

    e = sweep(range(longest))
    if bidirectional:
        e = (e + sweep(range(longest - 1, -1, -1))) / 2
    return e[seq, pos].to(z_chunks.dtype)


def token_gather_reference(x, index):
    """x (N, dim), index (M,) in [0, N) -> x[index] (M, dim)."""
    return x.index_select(0, index.long())


def token_scatter_reference(y, index, num_rows):
    """The adjoint of token_gather: y (M, dim), index (M,) in [0, num_rows) -> (num_rows, dim),
    out[r] = sum of the rows y[i] with index[i] == r (zero where none)."""
    out = y.new_zeros(num_rows, y.shape[1])
    return out.index_add(0, index.long(), y)


def ratio_loss_reference(mask, p, target_ratio):
    """H-Net's load-balancing loss: N/(N-1) ((N-1) F G + (1-F)(1-G)), F = mean(mask), G = mean(p).

    mask (T,) bool, p (T,) float -> 0-dim tensor (float32, float64 for float64 p).
    """
    n = float(target_ratio)
    if n <= 1:
        raise ValueError(f"target_ratio must be > 1, got {target_ratio}")
    cd = _compute_dtype(p)
    f = mask.to(cd).mean()
    g = p.to(cd).mean()
    return n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g))
