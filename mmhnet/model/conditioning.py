"""Conditioning shared by MMHNet and the attention baseline: flow-time embedding, feature
projections, learned null conditions for classifier-free guidance, pooled global conditioning,
sync features per audio frame.

    enc = ConditionEncoder(config)
    e = enc(conditions, drop_video, drop_text)       # EncodedConditions, reusable for every step
    c = enc.global_condition(e, t)                   # (B, d) adaLN input: time + pooled video/text

No positional information enters anywhere: pooling is a mean over frames/tokens, and the sync
features reach the audio frames by frame-rate index arithmetic (features.sync_index).
"""

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import sync_index, validate_batch

__all__ = ["EncodedConditions", "ConditionEncoder", "TimestepEmbedding", "FeatureProjection"]


class EncodedConditions(NamedTuple):
    """Conditions projected to the model width d.

    video (B, V, d) per visual frame; text (B, text_tokens, d); frame_features (B, A, d) what
    is added to each audio frame: the sync features of the frame covering it (MMHNet adds the
    visual features too); pooled (B, d) the global video + text conditioning (without flow
    time). A is the number of audio frames of the clip.
    """
    video: torch.Tensor
    text: torch.Tensor
    frame_features: torch.Tensor
    pooled: torch.Tensor

    def check_latents(self, x_t):
        """ValueError unless x_t (B, A, latent_dim) has these conditions' clips and frames."""
        if x_t.shape[:2] != self.frame_features.shape[:2]:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)} but the conditions are for "
                             f"{self.frame_features.shape[0]} clips of "
                             f"{self.frame_features.shape[1]} audio frames")

    @staticmethod
    def cat(items):
        """Concatenate along the batch axis (conditional and null batches for CFG)."""
        return EncodedConditions(*(torch.cat(parts) for parts in zip(*items)))


class TimestepEmbedding(nn.Module):
    """Flow time t in [0, 1] (B,) -> (B, d): sinusoids of 1000 t at geometric frequencies, then
    an MLP (as DiT's timestep embedder, with t scaled to DiT's 0..1000 range)."""

    def __init__(self, d_model, frequencies=256, max_period=10000.0):
        super().__init__()
        half = frequencies // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(frequencies, d_model), nn.SiLU(),
                                 nn.Linear(d_model, d_model))
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    def forward(self, t):
        angles = 1000.0 * t.float()[:, None] * self.freqs[None]
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class FeatureProjection(nn.Sequential):
    """(..., d_in) -> (..., d): Linear, SiLU, Linear."""

    def __init__(self, d_in, d_model):
        super().__init__(nn.Linear(d_in, d_model), nn.SiLU(), nn.Linear(d_model, d_model))


def _check_per_clip(name, t, batch, floating):
    """t: a (batch,) tensor, one value per clip: float flow times or bool drop flags. A single
    value is refused rather than broadcast over the clips."""
    kind = "floating-point" if floating else "bool"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a {kind} torch.Tensor of shape ({batch},), got "
                        f"{type(t).__name__}")
    right_kind = t.dtype.is_floating_point if floating else t.dtype == torch.bool
    if not right_kind:
        raise TypeError(f"{name} must be a {kind} tensor, got {t.dtype}")
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one value per clip, got "
                         f"{tuple(t.shape)}")


def _replace_dropped(features, null, drop):
    """features (B, N, d_in); null (d_in,); drop None | (B,) bool -> features with the dropped
    clips' rows replaced by null. torch.where keeps ``null`` in the graph even when nothing is
    dropped (so DistributedDataParallel sees every parameter used)."""
    if drop is None:
        return features
    return torch.where(drop[:, None, None], null.to(features.dtype), features)


class ConditionEncoder(nn.Module):
    """Projects the conditions to width d (config.d_model) and replaces dropped ones by the
    learned null conditions (one vector per feature kind, repeated over frames/tokens).

    forward(conditions: Conditions, drop_video=None, drop_text=None) -> EncodedConditions.
    drop_video / drop_text: None or (B,) bool; dropping video drops visual and sync features.
    """

    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.config = config
        self.visual_proj = FeatureProjection(config.visual_dim, d)
        self.sync_proj = FeatureProjection(config.sync_dim, d)
        self.text_proj = FeatureProjection(config.text_dim, d)
        self.null_visual = nn.Parameter(torch.zeros(config.visual_dim))
        self.null_sync = nn.Parameter(torch.zeros(config.sync_dim))
        self.null_text = nn.Parameter(torch.zeros(config.text_dim))
        self.pool_video = nn.Linear(d, d)
        self.pool_text = nn.Linear(d, d)
        self.global_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.time_embedding = TimestepEmbedding(d)

    def forward(self, conditions, drop_video: Optional[torch.Tensor] = None,
                drop_text: Optional[torch.Tensor] = None):
        counts = validate_batch(self.config, conditions)
        for name, drop in (("drop_video", drop_video), ("drop_text", drop_text)):
            if drop is not None:
                _check_per_clip(name, drop, conditions.visual.shape[0], floating=False)
        visual = _replace_dropped(conditions.visual, self.null_visual, drop_video)
        sync = _replace_dropped(conditions.sync, self.null_sync, drop_video)
        text = _replace_dropped(conditions.text, self.null_text, drop_text)
        video = self.visual_proj(visual)
        text = self.text_proj(text)
        index = sync_index(counts.audio, counts.sync, self.config, device=sync.device)
        frame_features = self.sync_proj(sync).index_select(1, index)
        pooled = self.global_mlp(self.pool_video(video.mean(1)) + self.pool_text(text.mean(1)))
        return EncodedConditions(video, text, frame_features, pooled)

    def global_condition(self, encoded, t):
        """adaLN input (B, d): SiLU(pooled conditions + time embedding). t: (B,) in [0, 1]."""
        _check_per_clip("t", t, encoded.pooled.shape[0], floating=True)
        return F.silu(encoded.pooled + self.time_embedding(t).to(encoded.pooled.dtype))
