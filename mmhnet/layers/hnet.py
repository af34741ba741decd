"""HNet: a hierarchical network of BiMamba2 stacks with dynamic chunking (H-Net, non-causal).

    net = HNet(["m4", ["m2", ["m8"], "m2"], "m4"], d_model=[256, 384, 512])
    y, ratio_loss, routings = net(x)        # x (batch, seqlen, 256) -> y (batch, seqlen, 256)
    loss = task_loss + 0.03 * ratio_loss    # H-Net weights the ratio loss by 0.03

The arch layout nests like H-Net's: a stage is [encoder, inner, decoder] with ``inner`` the
next stage's layout, or [main] for the innermost stage; each string lists blocks ("m4",
"m2M2": m = BiMamba2 block, M = BiMamba2 + SwiGLU MLP block; blocks.py). A stage runs

    h = encoder(x)
    chunks, routing = chunking(h)                      (DynamicChunking)
    z = inner(chunks)                                  (the next stage, on the chunks)
    h = chunking.dechunk(z, routing) + residual_proj(h)
    y = decoder(h)

``d_model`` lists the width of each stage, outermost first, and may only grow inwards. As in
H-Net, a stage wider than its caller appends a learned vector (``pad_dimension``) to each
incoming token and hands back only the caller's channels, so the outer channels pass through
unprojected; ``residual_proj`` starts at zero (float32, or float64 in a float64 network), so at initialisation the
dechunked path alone feeds the decoder.

The result is ``HNetOutput(hidden_states, ratio_loss, routings)``: ratio_loss is the sum over
stages of H-Net's load-balancing loss (each with its stage's target ratio), unweighted; routings
lists each stage's ``Routing``, outermost first (boundaries, compression).
"""

from typing import List, NamedTuple

import torch
import torch.nn as nn

from mmhnet.ops.reference import compute_dtype

from ._checks import check_tokens
from ._packing import pack
from .blocks import Isotropic, parse_layout
from .dynamic_chunking import DynamicChunking, Routing

__all__ = ["HNet", "HNetOutput", "layout_depth"]


class HNetOutput(NamedTuple):
    hidden_states: torch.Tensor
    ratio_loss: torch.Tensor
    routings: List[Routing]


def layout_depth(arch_layout):
    """Number of stages of an arch layout; ValueError (naming the part) if malformed."""
    if not isinstance(arch_layout, (list, tuple)) or len(arch_layout) not in (1, 3):
        raise ValueError("arch_layout must be [main] (innermost stage) or [encoder, inner, "
                         f"decoder], e.g. ['m4', ['m8'], 'm4']; got {arch_layout!r}")
    if len(arch_layout) == 1:
        parse_layout(arch_layout[0])
        return 1
    parse_layout(arch_layout[0])
    parse_layout(arch_layout[2])
    return 1 + layout_depth(arch_layout[1])


def _per_stage(value, count, name, what="stages"):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) < count:
        raise ValueError(f"{name} has {len(values)} entries but the arch layout has {count} {what}")
    return values


class HNet(nn.Module):
    """Hierarchical BiMamba2 network (module docstring).

    arch_layout: nested list as H-Net's. d_model: int or one int per stage, outermost first,
    non-decreasing. d_intermediate: SwiGLU width of M blocks, None / int / per stage.
    target_ratios: the ratio loss's N per chunking stage (float or list; default 4.0).
    mixer_options: BiMamba2 keyword arguments, one dict for all stages or one per stage.
    bidirectional_ema: dechunk with the bidirectional EMA (default) or the causal one.
    d_input: width of the incoming tokens (default d_model[0]; set by an enclosing stage).

    forward(x (batch, seqlen, d_input) | packed (1, total, d_input) with cu_seqlens | padded with
    mask) -> HNetOutput(hidden_states like x, ratio_loss 0-dim, routings).
    """

    def __init__(self, arch_layout, d_model, d_intermediate=None, target_ratios=4.0,
                 mixer_options=None, bidirectional_ema=True, backend=None, d_input=None,
                 device=None, dtype=None):
        super().__init__()
        depth = layout_depth(arch_layout)
        dims = _per_stage(d_model, depth, "d_model")
        if any(b < a for a, b in zip(dims, dims[1:depth])):
            raise ValueError(f"d_model must not shrink towards the inner stages; got {dims[:depth]}")
        ratios = _per_stage(target_ratios, depth - 1, "target_ratios", "chunking stages")
        inters = _per_stage(d_intermediate, depth, "d_intermediate")
        options = _per_stage(mixer_options or {}, depth, "mixer_options")
        options = [dict(o, backend=backend) for o in options]
        factory = {"device": device, "dtype": dtype}

        self.d_model, self.depth = dims[0], depth
        self.d_input = dims[0] if d_input is None else d_input
        if self.d_input > self.d_model:
            raise ValueError(f"d_model of a stage ({self.d_model}) must be at least the width of "
                             f"the tokens it receives ({self.d_input})")
        self.pad_dimension = nn.Parameter(torch.zeros(self.d_model - self.d_input, **factory)) \
            if self.d_model > self.d_input else None

        if depth == 1:
            self.main_network = Isotropic(self.d_model, arch_layout[0], options[0], inters[0],
                                          **factory)
            return
        self.encoder = Isotropic(self.d_model, arch_layout[0], options[0], inters[0], **factory)
        self.chunking = DynamicChunking(self.d_model, ratios[0], bidirectional_ema, backend,
                                        **factory)
        self.main_network = HNet(arch_layout[1], dims[1:], inters[1:], ratios[1:], options[1:],
                                 bidirectional_ema, backend, d_input=self.d_model, **factory)
        # float32 for 16-bit stages (as H-Net), float64 for float64 ones
        self.residual_proj = nn.Linear(self.d_model, self.d_model, device=device,
                                       dtype=compute_dtype(dtype))
        nn.init.zeros_(self.residual_proj.weight)
        self.decoder = Isotropic(self.d_model, arch_layout[2], options[0], inters[0], **factory)

    def forward(self, x, cu_seqlens=None, mask=None):
        check_tokens(x, self.d_input, cu_seqlens, mask)
        h, packing = pack(x, cu_seqlens, mask)
        cu = packing.cu_seqlens
        if self.pad_dimension is not None:
            h = torch.cat([h, self.pad_dimension.to(h.dtype).expand(*h.shape[:-1], -1)], dim=-1)

        if self.depth == 1:
            h = self.main_network(h, cu_seqlens=cu)
            loss, routings = h.new_zeros((), dtype=torch.float32), []
        else:
            h = self.encoder(h, cu_seqlens=cu)
            rdt = self.residual_proj.weight.dtype  # whatever module.to() made it
            residual = self.residual_proj(h.to(rdt))
            chunks, routing = self.chunking(h, cu_seqlens=cu)
            inner = self.main_network(chunks, cu_seqlens=routing.chunk_cu_seqlens)
            h = (self.chunking.dechunk(inner.hidden_states, routing).to(rdt) + residual).to(h.dtype)
            h = self.decoder(h, cu_seqlens=cu)
            loss = self.chunking.ratio_loss(routing) + inner.ratio_loss
            routings = [routing] + inner.routings
        return HNetOutput(packing.unpack(h[..., :self.d_input]), loss, routings)
