"""DynamicChunking: H-Net's routing, chunking and dechunking, made non-causal.

    dc = DynamicChunking(d_model=256, target_ratio=4.0)
    chunks, routing = dc(x)                 # x (batch, seqlen, 256) -> chunks (1, C, 256)
    y_chunks = main_network(chunks, cu_seqlens=routing.chunk_cu_seqlens)
    y = dc.dechunk(y_chunks, routing)       # (1, C, 256) -> (batch, seqlen, 256)
    loss_aux = dc.ratio_loss(routing)       # add alpha * loss_aux to the training loss

On the way in: q = q_proj(x), k = k_proj(x) (identity-initialised, no bias, as H-Net);
p_t = (1 - cos(q_t, k_{t-1})) / 2, 1 at each sequence start; a token opens a chunk where
p_t > 0.5; the chunk is represented by its first token (``route_and_gather``: route_boundaries
then chunk_gather). All sequences' chunks come out packed, with ``routing.chunk_cu_seqlens``.

On the way out: the chunk outputs are smoothed by the EMA with rate p (bidirectional: the mean of
the left-to-right and right-to-left EMAs, so every chunk hears both sides; p clamped to
[1e-4, 1 - 1e-4]), every token takes its chunk's value, and a straight-through confidence
c_t = p_t (boundary) or 1 - p_t (inside a chunk) multiplies it: 1 in the forward pass, its
gradient reaches the router (``ema_smooth``, ``chunk_scatter``).

Inputs take the layouts of the other layers: (batch, seqlen, d_model); packed (1, total,
d_model) with ``cu_seqlens``; padded with ``mask`` (the padding is dropped before routing and
comes back as zero rows).
"""

from typing import NamedTuple

import torch
import torch.nn as nn

from mmhnet.ops import chunk_scatter, ema_smooth, ratio_loss, route_and_gather
from mmhnet.ops._checks import check_flag, check_number

from ._checks import check_backend, check_positive_int, check_tokens
from ._packing import Packing, pack

__all__ = ["DynamicChunking", "Routing"]


class Routing(NamedTuple):
    """The routing decisions of one chunking step, over the packed tokens (T of them, C chunks).

    p (T,) float32 boundary probabilities; mask (T,) bool boundaries; chunk_id (T,) int32 the
    chunk of each token; chunk_cu_seqlens (nseq + 1,) int32 offsets of each sequence's chunks;
    p_chunks (C,) p at the boundaries; packing: how to restore the input layout.
    """
    p: torch.Tensor
    mask: torch.Tensor
    chunk_id: torch.Tensor
    chunk_cu_seqlens: torch.Tensor
    p_chunks: torch.Tensor
    packing: Packing

    @property
    def compression(self):
        """Tokens per chunk (T / C), a 0-dim tensor."""
        return self.mask.numel() / self.mask.sum().clamp(min=1)


class DynamicChunking(nn.Module):
    """Routing + chunking (``forward``) and dechunking (``dechunk``); see the module docstring.

    target_ratio: N of H-Net's ratio loss, the mean chunk length it steers towards (> 1).
    bidirectional: EMA in both directions (default) or left to right only (H-Net's causal one).
    """

    def __init__(self, d_model, target_ratio=4.0, bidirectional=True, backend=None, device=None,
                 dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_number("target_ratio", target_ratio, low=1)  # mean tokens per chunk
        bidirectional = check_flag("bidirectional", bidirectional)
        check_backend(backend)
        self.d_model, self.target_ratio, self.bidirectional = d_model, target_ratio, bidirectional
        self.backend = backend
        self.q_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.k_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(d_model))
            self.k_proj.weight.copy_(torch.eye(d_model))

    def forward(self, x, cu_seqlens=None, mask=None):
        """x (batch, seqlen, d_model) [or (1, total, d_model) with cu_seqlens, or padded with
        mask] -> (chunks (1, C, d_model), Routing)."""
        check_tokens(x, self.d_model, cu_seqlens, mask)
        packed, packing = pack(x, cu_seqlens, mask)
        rows = packed[0]
        p, boundary, chunks, chunk_cu, chunk_id, p_chunks = route_and_gather(
            self.q_proj(rows), self.k_proj(rows), rows, packing.cu_seqlens, backend=self.backend)
        return chunks[None], Routing(p, boundary, chunk_id, chunk_cu, p_chunks, packing)

    def dechunk(self, y_chunks, routing):
        """y_chunks (1, C, d) -> (batch, seqlen, d) in the layout ``forward`` was given."""
        check_tokens(y_chunks, y_chunks.shape[-1], routing.chunk_cu_seqlens, name="y_chunks")
        smooth = ema_smooth(y_chunks[0], routing.p_chunks, routing.chunk_cu_seqlens,
                            bidirectional=self.bidirectional, backend=self.backend)
        tokens = chunk_scatter(smooth, routing.chunk_id, p=routing.p, mask=routing.mask,
                               backend=self.backend)
        return routing.packing.unpack(tokens[None])

    def ratio_loss(self, routing):
        """H-Net's load-balancing loss for this step's routing (0-dim float32)."""
        return ratio_loss(routing.mask, routing.p, self.target_ratio, backend=self.backend)
