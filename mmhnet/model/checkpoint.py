"""Checkpoints: one file with the model kind, its config, weights, and the training state.

    save_checkpoint("run.pt", model, optimizer=opt, step=1000)
    ckpt = load_checkpoint("run.pt")            # ckpt.model is rebuilt from the stored config
"""

import os
from typing import NamedTuple, Optional

import torch

from .build import MODEL_KINDS
from .config import ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "model_kind"]

CHECKPOINT_FORMAT = "mmhnet-checkpoint-1"


class Checkpoint(NamedTuple):
    model: torch.nn.Module
    kind: str
    step: int
    optimizer_state: Optional[dict]


def model_kind(model):
    """"mmhnet" or "baseline" for a (possibly DDP-wrapped) model."""
    model = getattr(model, "module", model)
    for kind, cls in MODEL_KINDS.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"not an mmhnet model: {type(model).__name__}")


def save_checkpoint(path, model, *, optimizer=None, step=0):
    """Write the checkpoint atomically (a temporary file renamed over ``path``)."""
    kind = model_kind(model)
    model = getattr(model, "module", model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
    }
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model from the stored config and load its weights. Returns a Checkpoint."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path}: no such file") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not an mmhnet checkpoint (expected format "
                         f"{CHECKPOINT_FORMAT!r})")
    kind = state["kind"]
    if kind not in MODEL_KINDS:
        raise ValueError(f"checkpoint {path}: unknown model kind {kind!r}")
    model = MODEL_KINDS[kind](ModelConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return Checkpoint(model.to(map_location), kind, state["step"], state["optimizer"])
