"""Model configurations and the named presets (tiny, S, M, L).

A config fixes the input layout (the audio format and the feature widths) and the network's
widths and depths. Depths count adaLN blocks (BiMamba2 + SwiGLU MLP) in each part of the path:

    encoder_depth     original space, before routing (H-Net's encoder)
    multimodal_depth  compressed space, over time-interleaved audio chunks and video tokens
    audio_depth       compressed space, audio chunks only
    decoder_depth     original space, after dechunking (H-Net's decoder)
"""

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["AudioFormat", "AUDIO_FORMATS", "MIXER_MODES", "FIELD_BOUNDS", "ModelConfig",
           "PRESETS", "get_config", "preset_names"]


@dataclass(frozen=True)
class AudioFormat:
    """Audio latents: ``latent_dim`` channels at sample_rate / hop frames per second."""
    name: str
    sample_rate: int
    hop: int
    latent_dim: int

    @property
    def frame_rate(self):
        return self.sample_rate / self.hop


AUDIO_FORMATS = {
    "16k": AudioFormat("16k", 16000, 512, 20),      # 31.25 Hz
    "44k": AudioFormat("44k", 44100, 1024, 40),     # 43.07 Hz
}

MIXER_MODES = ("sum", "quasiseparable")    # BiMamba2's modes

# Upper bounds of the config fields: far above every preset (L: d_model 896, 45 blocks), they
# keep a config read from a file from asking for an absurd model; the CLI then checks the
# memory the run needs against the machine (cli_memory.py).
FIELD_BOUNDS = dict(
    d_model=16384, encoder_depth=1024, multimodal_depth=1024, audio_depth=1024,
    decoder_depth=1024, baseline_joint_depth=1024, baseline_fused_depth=1024, d_state=1024,
    headdim=1024, ngroups=4096, expand=16, d_conv=64, d_intermediate=262144, num_heads=1024,
    target_ratio=1e4, ratio_loss_weight=1e4, rope_base=1e12, visual_dim=65536, sync_dim=65536,
    text_dim=65536, text_tokens=65536, visual_fps=1000, sync_per_visual=64)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an MMHNet (or its attention baseline) and to read its inputs.

    The feature layout (DESIGN.md, "The thin MMHNet model"): visual features at
    ``visual_fps`` (8) with ``visual_dim`` (1024) channels, sync features at
    ``sync_per_visual`` x visual_fps (24) with ``sync_dim`` (768) channels, ``text_tokens`` (77)
    text token features of ``text_dim`` (1024) channels.
    """
    name: str = "custom"
    audio: str = "16k"
    d_model: int = 64
    encoder_depth: int = 1
    multimodal_depth: int = 2
    audio_depth: int = 1
    decoder_depth: int = 1
    d_state: int = 32
    headdim: int = 16
    # B/C groups of BiMamba2, whose gated RMSNorm normalises each group on its own. The presets
    # use one group per head: a head whose state sums over more tokens than a training clip
    # had then cannot rescale the other heads' outputs (docs/model.md, "Length").
    ngroups: int = 1
    expand: int = 2
    d_conv: int = 4
    mixer_mode: str = "quasiseparable"
    d_intermediate: int = 0            # SwiGLU width; 0: the layers' default (8/3 d_model)
    target_ratio: float = 4.0          # mean audio frames per chunk the ratio loss aims for
    ratio_loss_weight: float = 0.03
    # the attention baseline: joint (audio + video + text) and fused (audio-only) blocks,
    # attention heads, RoPE base
    baseline_joint_depth: int = 1
    baseline_fused_depth: int = 3
    num_heads: int = 4
    rope_base: float = 10000.0
    visual_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    text_tokens: int = 77
    visual_fps: int = 8
    sync_per_visual: int = 3

    def __post_init__(self):
        self._check_types()
        if self.audio not in AUDIO_FORMATS:
            raise ValueError(f"audio must be one of {sorted(AUDIO_FORMATS)}, got {self.audio!r}")
        if self.mixer_mode not in MIXER_MODES:
            raise ValueError(f"mixer_mode must be one of {MIXER_MODES}, got {self.mixer_mode!r}")
        for name in ("d_model", "d_state", "headdim", "ngroups", "expand", "d_conv", "num_heads",
                     "visual_dim", "sync_dim", "text_dim", "text_tokens", "visual_fps",
                     "sync_per_visual"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("encoder_depth", "multimodal_depth", "audio_depth", "decoder_depth",
                     "baseline_joint_depth", "baseline_fused_depth", "d_intermediate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, bound in FIELD_BOUNDS.items():
            if getattr(self, name) > bound:
                raise ValueError(f"{name} must be at most {bound}, got {getattr(self, name)} "
                                 f"(config bounds: mmhnet.model.config.FIELD_BOUNDS)")
        if (self.expand * self.d_model) % self.headdim:
            raise ValueError(f"expand * d_model ({self.expand * self.d_model}) must be a multiple "
                             f"of headdim ({self.headdim})")
        if self.d_model % (2 * self.num_heads):
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of 2 * num_heads "
                             f"({2 * self.num_heads}) for the baseline's rotary embedding")
        if not self.target_ratio > 1:
            raise ValueError(f"target_ratio must be > 1, got {self.target_ratio}")
        if not self.ratio_loss_weight >= 0:
            raise ValueError(f"ratio_loss_weight must be >= 0, got {self.ratio_loss_weight}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")

    def _check_types(self):
        """Every field has its declared type (a config read from a checkpoint may not): str, int
        (not bool), or a finite float (an int is accepted)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is str:
                ok = isinstance(value, str)
            elif field.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value))
            if not ok:
                expected = "a finite number" if field.type is float else field.type.__name__
                raise TypeError(f"config field {field.name} must be {expected}, got "
                                f"{value!r} ({type(value).__name__})")

    @property
    def audio_format(self):
        return AUDIO_FORMATS[self.audio]

    @property
    def latent_dim(self):
        return self.audio_format.latent_dim

    @property
    def sync_fps(self):
        return self.visual_fps * self.sync_per_visual

    def mixer_options(self):
        """Keyword arguments of every BiMamba2 in the model."""
        return dict(d_state=self.d_state, headdim=self.headdim, ngroups=self.ngroups,
                    expand=self.expand, d_conv=self.d_conv, mode=self.mixer_mode)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        if not isinstance(values, dict):
            raise TypeError(f"a config must be a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known: {sorted(known)}")
        return cls(**values)


# S matches MMAudio-S's hidden size (448), MLP ratio (4) and parameter count (~157M); M and L
# follow MMAudio-M/L (hidden 896, 44.1 kHz; ~621M and ~1.03B parameters). The baseline depths
# give the attention baseline about the same parameter count as MMHNet at each preset.
PRESETS = {
    "tiny": ModelConfig(name="tiny", d_model=64, encoder_depth=1, multimodal_depth=2,
                        audio_depth=1, decoder_depth=1, d_state=32, headdim=16, ngroups=8,
                        num_heads=4, baseline_joint_depth=2, baseline_fused_depth=3),
    "S": ModelConfig(name="S", d_model=448, d_intermediate=1792, encoder_depth=4,
                     multimodal_depth=9, audio_depth=8, decoder_depth=6, d_state=64,
                     headdim=64, ngroups=14, num_heads=7, baseline_joint_depth=6,
                     baseline_fused_depth=17),
    "M": ModelConfig(name="M", audio="44k", d_model=896, d_intermediate=3584, encoder_depth=4,
                     multimodal_depth=9, audio_depth=9, decoder_depth=5, d_state=64,
                     headdim=64, ngroups=28, num_heads=14, baseline_joint_depth=6,
                     baseline_fused_depth=18),
    "L": ModelConfig(name="L", audio="44k", d_model=896, d_intermediate=3584, encoder_depth=6,
                     multimodal_depth=16, audio_depth=15, decoder_depth=8, d_state=64,
                     headdim=64, ngroups=28, num_heads=14, baseline_joint_depth=10,
                     baseline_fused_depth=29),
}


def preset_names():
    return list(PRESETS)


def get_config(name, **overrides):
    """The preset ``name`` (tiny, S, M, L), with ``overrides`` applied (e.g. audio="44k")."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
