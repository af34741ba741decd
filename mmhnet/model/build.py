"""Building models by preset name and counting their parameters."""

import torch

from .baseline import AttentionBaseline
from .config import ModelConfig, get_config
from .mmhnet import MMHNet

__all__ = ["MODEL_KINDS", "build_model", "count_parameters", "preset_parameter_counts"]

MODEL_KINDS = {"mmhnet": MMHNet, "baseline": AttentionBaseline}


def build_model(config="tiny", kind="mmhnet", *, device=None, **overrides):
    """MMHNet (kind "mmhnet") or its attention baseline (kind "baseline") for a preset name or
    a ModelConfig; ``overrides`` change config fields (e.g. audio="44k")."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(MODEL_KINDS)}")
    if isinstance(config, ModelConfig):
        config = config.replace(**overrides) if overrides else config
    else:
        config = get_config(config, **overrides)
    return MODEL_KINDS[kind](config).to(device)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def preset_parameter_counts(config):
    """{kind: parameter count} of both models for a config, counted on the meta device (no
    memory is allocated, so L is as quick as tiny)."""
    with torch.device("meta"):
        return {kind: count_parameters(cls(config)) for kind, cls in MODEL_KINDS.items()}
