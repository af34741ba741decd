"""Training: the optimizer, one training step, and the loop (single process or DDP).

    model = build_model("tiny")
    opt = make_optimizer(model, lr=1e-3)
    out = training_step(model, opt, latents, conditions)      # LossOutput, after opt.step()

``train`` runs ``steps`` steps on a data source (data.py), logs, and writes checkpoints from
the main process. Under DDP each process draws its own batch (seeded with seed + rank) and
the gradients are averaged by DistributedDataParallel.
"""

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .checkpoint import save_checkpoint
from .distributed import DistInfo
from .flow import flow_matching_loss

__all__ = ["TrainSettings", "make_optimizer", "training_step", "train"]


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    seed: int = 0
    log_every: int = 50
    checkpoint_path: Optional[str] = None
    save_every: int = 0            # 0: only at the end


def make_optimizer(model, lr=1e-3, weight_decay=0.0):
    """AdamW; no weight decay on biases, norms, embeddings-like vectors and the SSM parameters
    the layers mark ``_no_weight_decay`` (A_log, D, dt_bias)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def training_step(model, optimizer, latents, conditions, draws=None, *, grad_clip=1.0,
                  generator=None):
    """Forward, backward, gradient clipping and optimizer step. Returns the LossOutput."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = flow_matching_loss(model, latents, conditions, draws, generator=generator)
    out.loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return out


def _learning_rate(settings, step):
    """Linear warm-up, then constant."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


def train(model, optimizer, source, settings: TrainSettings, dist_info: DistInfo, *,
          start_step=0, log: Optional[Callable[[str], None]] = print):
    """Run steps start_step .. settings.steps - 1. ``model`` may be DDP-wrapped. Returns the
    list of (step, loss, flow_loss, ratio_loss, compression) of the logged steps (this
    process's batch)."""
    device = dist_info.device
    generator = torch.Generator().manual_seed(settings.seed * 1000 + dist_info.rank)
    history: List[tuple] = []
    started = time.perf_counter()
    for step in range(start_step, settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        latents, conditions = source.batch(settings.batch_size, generator)
        out = training_step(model, optimizer, latents.to(device), conditions.to(device),
                            grad_clip=settings.grad_clip, generator=generator)
        last = step + 1 == settings.steps
        if last or (settings.log_every and (step + 1) % settings.log_every == 0):
            record = (step + 1, out.loss.item(), out.flow_loss.item(), out.ratio_loss.item(),
                      out.compression.item())
            history.append(record)
            if log is not None and dist_info.is_main:
                log(f"step {record[0]:6d}  loss {record[1]:.4f}  flow {record[2]:.4f}  "
                    f"ratio {record[3]:.4f}  frames/chunk {record[4]:.2f}  "
                    f"{time.perf_counter() - started:7.1f} s")
        save_now = settings.save_every and (step + 1) % settings.save_every == 0
        if settings.checkpoint_path and dist_info.is_main and (last or save_now):
            save_checkpoint(settings.checkpoint_path, model, optimizer=optimizer, step=step + 1)
    return history
