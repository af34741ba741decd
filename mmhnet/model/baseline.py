"""The attention baseline: an MMAudio-like flow transformer with joint attention and RoPE.

It shares MMHNet's conditioning (ConditionEncoder: pooled adaLN conditioning, sync features per
audio frame, learned null conditions), input projection and velocity head, and replaces the
hierarchical BiMamba2 network by

    joint blocks (config.baseline_joint_depth): audio, video and text tokens, each with their own
        adaLN, projections and MLP, attend jointly (one softmax over all of them); audio and
        video queries/keys are rotated by RoPE at time-aligned positions, text has none;
    fused blocks (config.baseline_fused_depth): audio-only self-attention with RoPE.

So the two models differ only in the backbone, which is what the train-short / test-long study
compares. Interface as MMHNet (``encode_conditions``, ``velocity``, ``forward``).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmhnet.layers import RMSNorm, SwiGLU

from .adaln import VelocityHead
from .conditioning import ConditionEncoder, EncodedConditions
from .features import validate_batch
from .mmhnet import VelocityOutput
from .rope import apply_rotary, rotary_angles

__all__ = ["AttentionBaseline"]


class AttentionBranch(nn.Module):
    """One modality's weights in an adaLN attention block (MMAudio's single block without its
    convolutions). ``project`` -> (q, k, v) heads; ``finish`` adds the attention output and the
    MLP, gated. A ``project_only`` branch (video and text in the last joint block, whose outputs
    nothing reads) has no output projection or MLP."""

    def __init__(self, d_model, num_heads, d_intermediate=None, project_only=False):
        super().__init__()
        self.num_heads, self.headdim = num_heads, d_model // num_heads
        self.norm_attn = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.q_norm = RMSNorm(self.headdim)
        self.k_norm = RMSNorm(self.headdim)
        if not project_only:
            self.out = nn.Linear(d_model, d_model)
            self.norm_mlp = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
            self.mlp = SwiGLU(d_model, d_intermediate)
        self.modulation = nn.Linear(d_model, (2 if project_only else 6) * d_model)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def project(self, x, cond, rotation=None):
        """x (B, N, d), cond (B, d) -> ((q, k, v) each (B, H, N, headdim), modulation)."""
        mod = self.modulation(cond)[:, None].to(x.dtype).chunk(self.modulation.out_features
                                                               // x.shape[-1], dim=-1)
        h = self.norm_attn(x) * (1 + mod[1]) + mod[0]
        b, n, _ = x.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, self.headdim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotation is not None:
            q, k = apply_rotary(q, *rotation), apply_rotary(k, *rotation)
        return (q, k, v), mod

    def finish(self, x, attended, mod):
        """attended (B, H, N, headdim) -> x + gated attention output + gated MLP."""
        attended = attended.transpose(1, 2).flatten(2)
        x = x + mod[2] * self.out(attended)
        return x + mod[5] * self.mlp(self.norm_mlp(x) * (1 + mod[4]) + mod[3])


class JointBlock(nn.Module):
    """Audio (B, A, d), video (B, V, d), text (B, K, d) attend jointly; each keeps its weights.
    ``last``: video and text only provide keys and values and come out unchanged."""

    def __init__(self, d_model, num_heads, d_intermediate=None, last=False):
        super().__init__()
        self.last = last
        self.audio = AttentionBranch(d_model, num_heads, d_intermediate)
        self.video = AttentionBranch(d_model, num_heads, d_intermediate, project_only=last)
        self.text = AttentionBranch(d_model, num_heads, d_intermediate, project_only=last)

    def forward(self, audio, video, text, cond, audio_rot, video_rot):
        qa, ma = self.audio.project(audio, cond, audio_rot)
        qv, mv = self.video.project(video, cond, video_rot)
        qt, mt = self.text.project(text, cond)
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(qa, qv, qt))
        out = F.scaled_dot_product_attention(q, k, v)
        a, n = audio.shape[1], video.shape[1]
        audio = self.audio.finish(audio, out[:, :, :a], ma)
        if self.last:
            return audio, video, text
        return (audio, self.video.finish(video, out[:, :, a:a + n], mv),
                self.text.finish(text, out[:, :, a + n:], mt))


class FusedBlock(nn.Module):
    """Audio-only adaLN self-attention block with RoPE: (B, A, d) -> same."""

    def __init__(self, d_model, num_heads, d_intermediate=None):
        super().__init__()
        self.audio = AttentionBranch(d_model, num_heads, d_intermediate)

    def forward(self, audio, cond, audio_rot):
        qkv, mod = self.audio.project(audio, cond, audio_rot)
        return self.audio.finish(audio, F.scaled_dot_product_attention(*qkv), mod)


class AttentionBaseline(nn.Module):
    """MMAudio-like joint-attention flow transformer with RoPE (module docstring)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        d, heads = config.d_model, config.num_heads
        inter = config.d_intermediate or None
        self.conditions = ConditionEncoder(config)
        self.audio_in = nn.Linear(config.latent_dim, d)
        joint = config.baseline_joint_depth
        self.joint_blocks = nn.ModuleList(JointBlock(d, heads, inter, last=i == joint - 1)
                                          for i in range(joint))
        self.fused_blocks = nn.ModuleList(FusedBlock(d, heads, inter)
                                          for _ in range(config.baseline_fused_depth))
        self.head = VelocityHead(d, config.latent_dim)
        self.recompute = False

    def set_recompute(self, enabled=True):
        """Gradient checkpointing of every block."""
        self.recompute = enabled
        return self

    def encode_conditions(self, conditions, drop_video=None, drop_text=None):
        return self.conditions(conditions, drop_video, drop_text)

    def _rotations(self, num_audio, num_video, device):
        """RoPE tables for audio frames 0..A-1 and video frames at time-aligned positions."""
        headdim = self.config.d_model // self.config.num_heads
        per_video = self.config.audio_format.frame_rate / self.config.visual_fps
        audio_pos = torch.arange(num_audio, device=device, dtype=torch.float32)
        video_pos = torch.arange(num_video, device=device, dtype=torch.float32) * per_video
        base = self.config.rope_base
        return rotary_angles(audio_pos, headdim, base), rotary_angles(video_pos, headdim, base)

    def _run(self, block, *args):
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def velocity(self, x_t, t, encoded: EncodedConditions):
        """x_t (B, A, latent_dim), t (B,), encoded conditions -> VelocityOutput."""
        encoded.check_latents(x_t)
        cond = self.conditions.global_condition(encoded, t)
        audio = self.audio_in(x_t) + encoded.frame_features
        video, text = encoded.video, encoded.text
        audio_rot, video_rot = self._rotations(audio.shape[1], video.shape[1], audio.device)
        for block in self.joint_blocks:
            audio, video, text = self._run(block, audio, video, text, cond, audio_rot, video_rot)
        for block in self.fused_blocks:
            audio = self._run(block, audio, cond, audio_rot)
        zero = x_t.new_zeros((), dtype=torch.float32)
        return VelocityOutput(self.head(audio, cond), zero, zero + 1)

    def forward(self, x_t, t, conditions, drop_video=None, drop_text=None):
        validate_batch(self.config, conditions, x_t)
        return self.velocity(x_t, t, self.encode_conditions(conditions, drop_video, drop_text))
