"""``mmhnet train``: flow-matching training on feature files or the synthetic task; one process
or several under torchrun (DistributedDataParallel, NCCL on GPU, gloo on CPU).

    mmhnet train --config tiny --synthetic --steps 2000 --out run.pt
    torchrun --nproc_per_node 2 -m mmhnet.cli train --config S --features data/ --out run.pt
"""

import sys

import torch

from .build import MODEL_KINDS, build_model
from .checkpoint import load_checkpoint, model_kind
from .config import PRESETS
from .data import FeatureFileSource, SyntheticSource, feature_paths
from .distributed import init_distributed, shutdown_distributed, wrap_model
from .features import FeatureError
from .train import TrainSettings, make_optimizer, train

__all__ = ["add_train_command"]


def _model_and_state(args):
    """(model, optimizer state or None, first step)."""
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        return ckpt.model, ckpt.optimizer_state, ckpt.step
    if not args.config:
        raise ValueError("give --config NAME (or --resume CHECKPOINT)")
    torch.manual_seed(args.seed)
    return build_model(args.config, args.model, audio=args.audio or PRESETS[args.config].audio), \
        None, 0


def _source(args, config, info):
    if args.synthetic:
        return SyntheticSource(config, args.clip_seconds, seed=args.seed)
    return FeatureFileSource(feature_paths(args.features), config, args.clip_seconds,
                             info.rank, info.world_size)


def _run(args):
    info = init_distributed(args.device)
    try:
        model, optimizer_state, start = _model_and_state(args)
        source = _source(args, model.config, info)
    except (FeatureError, FileNotFoundError, ValueError) as exc:
        print(f"mmhnet train: error: {exc}", file=sys.stderr)
        shutdown_distributed()
        return 2
    model.to(info.device).set_recompute(args.recompute)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                             warmup_steps=args.warmup_steps, seed=args.seed,
                             log_every=args.log_every, checkpoint_path=args.out,
                             save_every=args.save_every)
    if info.is_main:
        params = sum(p.numel() for p in model.parameters())
        print(f"training {model_kind(model)} {model.config.name} ({params / 1e6:.2f}M parameters) "
              f"on {info.world_size} process(es), {info.device}, steps {start}..{args.steps}, "
              f"batch {args.batch_size} per process of {args.clip_seconds:g} s clips")
    try:
        train(wrap_model(model, info), optimizer, source, settings, info, start_step=start)
    except FeatureError as exc:
        print(f"mmhnet train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    if info.is_main:
        print(f"wrote {args.out}")
    return 0


def add_train_command(sub):
    p = sub.add_parser("train", help="train MMHNet (or the baseline) by flow matching",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(PRESETS), help="preset to train from scratch")
    p.add_argument("--resume", help="continue from a checkpoint (its config and step)")
    p.add_argument("--model", choices=list(MODEL_KINDS), default="mmhnet")
    p.add_argument("--audio", choices=["16k", "44k"], help="audio format (default: the preset's)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", nargs="+", help="feature files, directories or globs "
                     "(.pt, layout in docs/model.md; 'latent' required)")
    src.add_argument("--synthetic", action="store_true", help="the synthetic event task")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="clips per process and step")
    p.add_argument("--clip-seconds", type=float, default=8.0, help="training clip length")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=0, help="0: save at the end only")
    p.add_argument("--recompute", action="store_true", help="gradient checkpointing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.set_defaults(func=_run)
