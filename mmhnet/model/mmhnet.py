"""MMHNet: the thin video-to-audio flow model built from BiMamba2 and DynamicChunking.

Per clip (B clips of A audio frames and V visual frames; d = config.d_model):

    conditions -> ConditionEncoder: video (B, V, d), text (B, 77, d), sync per audio frame
                  (B, A, d), pooled (B, d); ModalityRouter mixes text into each video token
    frames = sync per audio frame + video per audio frame          (B, A, d)
    c = SiLU(pooled + time embedding)                              adaLN input (B, d)
    h = audio_in(x_t) + frames                                     (B, A, d)
    h = encoder(h, c)                                              original space
    chunks, routing = DynamicChunking(h)                           temporal routing + chunking
    z = interleave(chunks, video tokens) -> multimodal blocks -> audio chunks back
    z = audio blocks(z)                                            compressed space, audio only
    h = dechunk(z, routing) + residual_proj(h)                     H-Net's residual
    h = decoder(h, c)                                              original space
    v = VelocityHead(h, c)                                         (B, A, latent_dim)

The original-space blocks see the video frame-aligned: each audio frame gets the sync features
and the (projected) visual features of the frames covering its centre, by frame-rate index
arithmetic (features.sync_index / visual_index), so what an event is and exactly when it starts
are both there at audio-frame resolution. The compressed space cannot place information that
precisely: a chunk spans several frames, its boundaries are where the router puts them (not
necessarily at an event's onset), and dechunking smooths over neighbouring chunks (docs/study.md,
"What changed the outcome").

There are no positional embeddings: BiMamba2 is position-free, the chunk boundaries come from
adjacent-frame similarity, and the interleaving only orders tokens by time.
"""

from typing import NamedTuple

import torch
import torch.nn as nn

from mmhnet.layers import DynamicChunking
from mmhnet.ops import ratio_loss

from .adaln import AdaLNStack, VelocityHead
from .conditioning import ConditionEncoder, EncodedConditions
from .features import validate_batch, visual_index
from .interleave import chunk_start_frames, interleave_order, sequence_index
from .modality_router import ModalityRouter

__all__ = ["MMHNet", "VelocityOutput"]


class VelocityOutput(NamedTuple):
    """velocity (B, A, latent_dim); ratio_loss 0-dim float32 (mean over clips of H-Net's ratio
    loss; 0 for models without chunking); compression 0-dim: audio frames per chunk."""
    velocity: torch.Tensor
    ratio_loss: torch.Tensor
    compression: torch.Tensor


class MMHNet(nn.Module):
    """The thin MMHNet (module docstring). Build with ``MMHNet(get_config("tiny"))``.

    forward(x_t (B, A, latent_dim), t (B,), conditions: Conditions, drop_video=None,
    drop_text=None) -> VelocityOutput. For sampling, encode the conditions once
    (``encode_conditions``) and call ``velocity`` at every step.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        d, mixer = config.d_model, config.mixer_options()
        inter = config.d_intermediate or None
        self.conditions = ConditionEncoder(config)
        self.modality_router = ModalityRouter(d)
        self.audio_in = nn.Linear(config.latent_dim, d)
        self.encoder = AdaLNStack(config.encoder_depth, d, mixer, inter)
        self.chunking = DynamicChunking(d, target_ratio=config.target_ratio)
        self.audio_type = nn.Parameter(torch.zeros(d))
        self.video_type = nn.Parameter(torch.zeros(d))
        self.multimodal = AdaLNStack(config.multimodal_depth, d, mixer, inter)
        self.audio_blocks = AdaLNStack(config.audio_depth, d, mixer, inter)
        self.residual_proj = nn.Linear(d, d)
        nn.init.zeros_(self.residual_proj.weight)
        nn.init.zeros_(self.residual_proj.bias)
        self.decoder = AdaLNStack(config.decoder_depth, d, mixer, inter)
        self.head = VelocityHead(d, config.latent_dim)

    def set_recompute(self, enabled=True):
        """Gradient checkpointing of every block (less activation memory, one more forward)."""
        for stack in (self.encoder, self.multimodal, self.audio_blocks, self.decoder):
            stack.recompute = enabled
        return self

    def encode_conditions(self, conditions, drop_video=None, drop_text=None):
        """Conditions -> EncodedConditions: video tokens already routed with the text;
        frame_features carry the sync and the visual features of each audio frame."""
        enc = self.conditions(conditions, drop_video, drop_text)
        index = visual_index(enc.frame_features.shape[1], enc.video.shape[1], self.config,
                             device=enc.video.device)
        frames = enc.frame_features + enc.video.index_select(1, index)
        video, _ = self.modality_router(enc.video, enc.text)
        return enc._replace(video=video, frame_features=frames)

    def velocity(self, x_t, t, encoded: EncodedConditions):
        """x_t (B, A, latent_dim), t (B,), encoded conditions of the same clips -> VelocityOutput."""
        encoded.check_latents(x_t)
        batch, frames = x_t.shape[:2]
        cond = self.conditions.global_condition(encoded, t)
        h = self.audio_in(x_t) + encoded.frame_features
        h = self.encoder(h, cond)
        residual = self.residual_proj(h)

        chunks, routing = self.chunking(h)
        chunk_cu = routing.chunk_cu_seqlens
        chunks = chunks[0] + self.audio_type
        if len(self.multimodal):
            video = (encoded.video + self.video_type).flatten(0, 1)
            mix = interleave_order(chunk_start_frames(routing, frames), chunk_cu,
                                   encoded.video.shape[1], self.config)
            z = self.multimodal(mix.gather(chunks, video), cond, mix.token_sequence,
                                mix.cu_seqlens)
            chunks = mix.chunks_of(z)
        chunk_seq = sequence_index(chunk_cu, chunks.shape[0])
        z = self.audio_blocks(chunks[None], cond, chunk_seq, chunk_cu)

        h = self.chunking.dechunk(z, routing) + residual
        h = self.decoder(h, cond)
        return VelocityOutput(self.head(h, cond), self._ratio_loss(routing, batch),
                              routing.compression)

    def _ratio_loss(self, routing, batch):
        """Mean over clips of each clip's ratio loss, so that a batch split across processes
        (DDP) averages to the same loss and gradient as the whole batch."""
        masks = routing.mask.view(batch, -1)
        probs = routing.p.view(batch, -1)
        losses = [ratio_loss(masks[i], probs[i], self.config.target_ratio) for i in range(batch)]
        return torch.stack(losses).mean()

    def forward(self, x_t, t, conditions, drop_video=None, drop_text=None):
        validate_batch(self.config, conditions, x_t)
        return self.velocity(x_t, t, self.encode_conditions(conditions, drop_video, drop_text))
