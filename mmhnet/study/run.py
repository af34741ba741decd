"""The train-short / test-long study: train the tiny MMHNet and its same-size attention baseline
(joint attention with RoPE) on 8 s clips of the synthetic event task, then generate 8, 60 and
300 s and measure the per-frame error and the event alignment (metrics.py).

    python -m mmhnet.study [--out out/study] [--steps 2000] [--train-budget 300]

Both models see the same training batches (same seeds) and the same number of optimizer steps:
MMHNet trains first, for ``steps`` steps or until ``train_budget`` seconds have passed, and the
baseline then trains for as many steps as MMHNet did (with the same time cap as a safety net).
The learning rate warms up, then decays linearly to 0 at the end of each model's training.
Evaluation clips, starting noise and sampler settings are identical for both models.
"""

import argparse
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import List, Tuple

import torch

from mmhnet.model import (SyntheticTask, build_model, count_parameters, euler_sample,
                          get_config, make_optimizer, training_step)

from .metrics import event_alignment, per_frame_error

__all__ = ["StudySettings", "train_for", "evaluate", "run_study"]


@dataclass
class StudySettings:
    config: str = "tiny"
    train_seconds: float = 8.0
    steps: int = 2000
    train_budget: float = 300.0       # seconds of training per model, at most
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 50
    # (duration in seconds, clips): about 300 s of audio (~150 events) per duration
    eval_points: List[Tuple[float, int]] = field(
        default_factory=lambda: [(8.0, 38), (60.0, 5), (300.0, 1)])
    sampler_steps: int = 10
    cfg_scale: float = 1.0
    seed: int = 0


def _lr(settings, step, progress):
    """Linear warm-up, then linear decay to 0 at progress 1 (the end of training)."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr * max(0.0, 1.0 - progress)


def train_for(kind, task, settings, max_steps, log=print):
    """Train a fresh ``kind`` model on train_seconds clips for max_steps steps or until the time
    budget is spent; the learning rate decays linearly to 0 at whichever end comes first.
    Returns (model, steps done, seconds, last loss)."""
    torch.manual_seed(settings.seed)
    model = build_model(settings.config, kind)
    optimizer = make_optimizer(model, settings.lr)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    started = time.perf_counter()
    step, losses = 0, []
    while True:
        progress = max(step / max_steps, (time.perf_counter() - started) / settings.train_budget)
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr(settings, step, progress)
        clips = task.sample(settings.train_seconds, settings.batch_size, generator=generator)
        out = training_step(model, optimizer, clips.latents, clips.conditions,
                            generator=generator)
        losses.append(out.flow_loss.item())
        step += 1
        if step % 100 == 0:
            log(f"  {kind}: step {step}  flow loss (mean of last 100) "
                f"{sum(losses[-100:]) / len(losses[-100:]):.4f}  "
                f"{time.perf_counter() - started:.0f} s")
    tail = losses[-50:]
    return model.eval(), step, time.perf_counter() - started, sum(tail) / max(len(tail), 1)


def evaluate(model, task, settings, log=print):
    """One row per eval point: seconds, clips, frames, per-frame error, event alignment,
    events, sampling seconds."""
    rows = []
    for seconds, count in settings.eval_points:
        generator = torch.Generator().manual_seed(settings.seed + 1000 + int(seconds))
        clips = task.sample(seconds, count, generator=generator)
        noise = torch.randn(clips.latents.shape, generator=generator)
        started = time.perf_counter()
        generated = euler_sample(model, clips.conditions, steps=settings.sampler_steps,
                                 cfg_scale=settings.cfg_scale, noise=noise)
        took = time.perf_counter() - started
        row = dict(seconds=seconds, clips=count, frames=int(clips.latents.shape[1]),
                   error=per_frame_error(generated, clips.latents),
                   alignment=event_alignment(generated, clips, task),
                   events=int(clips.events.shape[0]), sample_seconds=took)
        log(f"  {seconds:5g} s x {count}: error {row['error']:.4f}  alignment "
            f"{row['alignment']:.3f}  ({row['events']} events, {took:.1f} s)")
        rows.append(row)
    return rows


def run_study(settings: StudySettings, log=print):
    """Train both models and evaluate them. Returns the results dict (also what is saved)."""
    task = SyntheticTask(get_config(settings.config), seed=settings.seed)
    results = dict(settings=asdict(settings), machine=_machine(), models={})
    max_steps = settings.steps
    for kind, label in (("mmhnet", "MMHNet"), ("baseline", "Transformer + RoPE")):
        log(f"training {label} on {settings.train_seconds:g} s clips")
        model, steps, took, loss = train_for(kind, task, settings, max_steps, log)
        max_steps = steps                   # the baseline gets as many steps as MMHNet had
        log(f"evaluating {label} ({steps} steps, {took:.0f} s)")
        rows = evaluate(model, task, settings, log)
        results["models"][kind] = dict(label=label, parameters=count_parameters(model),
                                       train_steps=steps, train_seconds=took,
                                       final_train_loss=loss, rows=rows)
    return results


def _machine():
    return dict(platform=platform.platform(), processor=platform.processor() or "unknown",
                threads=torch.get_num_threads(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"))


def main(argv=None):
    from .report import write_report

    parser = argparse.ArgumentParser(prog="python -m mmhnet.study", description=__doc__)
    parser.add_argument("--out", default="out/study", help="folder for results.json, "
                        "results.md and length_generalization.png (docs/study holds the "
                        "published run: name it to refresh that)")
    parser.add_argument("--steps", type=int, default=StudySettings.steps)
    parser.add_argument("--train-budget", type=float, default=StudySettings.train_budget)
    parser.add_argument("--sampler-steps", type=int, default=StudySettings.sampler_steps)
    parser.add_argument("--seed", type=int, default=StudySettings.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the "
                        "study's ops are small, and on a shared machine more threads than free "
                        "cores slow every op down many times over)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = StudySettings(steps=args.steps, train_budget=args.train_budget,
                             sampler_steps=args.sampler_steps, seed=args.seed)
    started = time.perf_counter()
    results = run_study(settings)
    results["total_seconds"] = time.perf_counter() - started
    for line in write_report(results, args.out):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
