"""Training: the optimizer, one training step, and the loop (single process or DDP).

    model = build_model("tiny")
    opt = make_optimizer(model, lr=1e-3)
    out = training_step(model, opt, latents, conditions)      # LossOutput, after opt.step()

``train`` runs ``steps`` steps on a data source (data.py), logs, and writes checkpoints from
the main process. Under DDP each process draws its own batch (its own generator, seeded with
seed * 1000 + rank) and the gradients are averaged by DistributedDataParallel.

A resume is exact: every checkpoint holds the training state (``capture_train_state``): each
process's data generator, which draws the batches, the crops and the flow-matching noise (so
it is also the position in the data), and the global torch, CUDA and Python random states
(NumPy is not used). ``train`` restores them, so 2 + 2 steps give the same weights as 4, bit
for bit on CPU.

A step whose loss or gradient norm is NaN or infinite raises TrainingDiverged naming the step,
before the optimizer applies it: the weights stay finite and no checkpoint is written.
"""

import random
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.distributed as dist

from .checkpoint import as_tuples, save_checkpoint
from .distributed import DistInfo
from .flow import flow_matching_loss

__all__ = ["TrainSettings", "TrainingDiverged", "make_optimizer", "training_step", "train",
           "capture_train_state", "restore_global_rng"]


class TrainingDiverged(ValueError):
    """A training step's loss or gradients are NaN or infinite; ``step`` is the 1-based step."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


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
    """Forward, backward, gradient clipping and optimizer step. Returns the LossOutput.
    Raises TrainingDiverged, before the optimizer step, when the loss or the gradient norm is
    NaN or infinite (one host sync per step)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = flow_matching_loss(model, latents, conditions, draws, generator=generator)
    out.loss.backward()
    # the norm is computed even without clipping: a non-finite gradient shows in it
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                          grad_clip if grad_clip else float("inf"))
    if not bool(torch.isfinite(out.loss) & torch.isfinite(norm)):
        raise TrainingDiverged(f"the loss is {out.loss.item():g} and the gradient norm "
                               f"{norm.item():g}")
    optimizer.step()
    return out


def _learning_rate(settings, step):
    """Linear warm-up, then constant."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


def _global_rng_state():
    """The global random states: torch's CPU generator, Python's, and CUDA's when it has been
    initialised (NumPy's is not kept: nothing in the loop draws from it)."""
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": cuda}


def restore_global_rng(state):
    """Restore the global random states of capture_train_state's ``global`` entry (CUDA's only
    on a machine with as many devices)."""
    torch.set_rng_state(state["torch"])
    random.setstate(as_tuples(state["python"]))
    if state["cuda"] is not None and torch.cuda.is_available() \
            and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_train_state(generator, dist_info):
    """The training state a checkpoint stores: {"generators": every process's data generator
    state (gathered from all processes: a collective call under DDP), "global": the global
    random states (process 0's)}."""
    state = generator.get_state()
    if dist_info.distributed:
        states = [None] * dist_info.world_size
        dist.all_gather_object(states, state)
    else:
        states = [state]
    return {"generators": states, "global": _global_rng_state()}


def _data_generator(settings, dist_info, start_step, train_state, log):
    """This process's data generator: restored from a checkpoint's train_state when it has one
    for every process, else seeded from the seed and rank (and the step, so that a resume
    without the state does not replay the first batches)."""
    generator = torch.Generator()
    states = (train_state or {}).get("generators")
    if states is not None and len(states) == dist_info.world_size:
        generator.set_state(states[dist_info.rank])
        return generator
    if start_step and log is not None and dist_info.is_main:
        reason = ("it has no training state" if states is None else
                  f"it was written by {len(states)} process(es), this run has "
                  f"{dist_info.world_size}")
        log(f"note: resuming without the checkpoint's data order ({reason}): the batches "
            f"differ from an uninterrupted run")
    return generator.manual_seed(settings.seed * 1000 + dist_info.rank + 7919 * start_step)


def train(model, optimizer, source, settings: TrainSettings, dist_info: DistInfo, *,
          start_step=0, train_state=None, log: Optional[Callable[[str], None]] = print):
    """Run steps start_step .. settings.steps - 1. ``model`` may be DDP-wrapped. train_state:
    the training state of the checkpoint resumed from (capture_train_state), or None. Returns
    the list of (step, loss, flow_loss, ratio_loss, compression) of the logged steps (this
    process's batch). Raises TrainingDiverged naming the step whose loss or gradients are not
    finite; the checkpoint written before it is kept."""
    device = dist_info.device
    generator = _data_generator(settings, dist_info, start_step, train_state, log)
    if train_state is not None and train_state.get("global") is not None:
        restore_global_rng(train_state["global"])
    history: List[tuple] = []
    saved = None   # the last step written in this run
    started = time.perf_counter()
    for step in range(start_step, settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        latents, conditions = source.batch(settings.batch_size, generator)
        try:
            out = training_step(model, optimizer, latents.to(device), conditions.to(device),
                                grad_clip=settings.grad_clip, generator=generator)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"training stopped at step {step + 1}: {exc}, so the step was "
                                   f"not applied{_kept(settings, saved)}", step + 1) from None
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
        if settings.checkpoint_path and (last or save_now):
            state = capture_train_state(generator, dist_info)   # every process takes part
            if dist_info.is_main:
                save_checkpoint(settings.checkpoint_path, model, optimizer=optimizer,
                                step=step + 1, train_state=state)
            saved = step + 1
    return history


def _kept(settings, saved):
    """What a stopped run leaves on disk, for its error message."""
    if not settings.checkpoint_path:
        return ""
    if saved is None:
        return f"; nothing was written to {settings.checkpoint_path} by this run"
    return f"; {settings.checkpoint_path} keeps step {saved}"
