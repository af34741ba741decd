"""``mmhnet train``: flow-matching training on feature files or the synthetic task; one process
or several under torchrun (DistributedDataParallel, NCCL on GPU, gloo on CPU).

    mmhnet train --config tiny --synthetic --steps 2000 --out run.pt
    torchrun --nproc_per_node 2 -m mmhnet.cli train --config S --features data/ --out run.pt

Everything is checked before the first step: the arguments, the output path, the checkpoint to
resume from, and the memory a step needs (cli_memory.py). A bad input is one ``error:`` line
and exit status 2.
"""

import torch

from .build import MODEL_KINDS, build_model
from .checkpoint import CheckpointError, model_from_checkpoint, model_kind
from .cli_common import (CliError, check_output_path, device_arg, duration, nonnegative_float,
                         nonnegative_int, positive_float, positive_int, report_error, seed_int)
from .cli_memory import check_fits, memory_limit, read_checkpoint_within, run_memory
from .config import PRESETS
from .data import FeatureFileSource, SyntheticSource, feature_paths
from .distributed import init_distributed, shutdown_distributed, wrap_model
from .features import FeatureError, frame_counts
from .train import TrainingDiverged, TrainSettings, make_optimizer, train

__all__ = ["add_train_command"]

INPUT_ERRORS = (CliError, CheckpointError, FeatureError, FileNotFoundError, TrainingDiverged)


def _plan(args, limit):
    """(kind, config, checkpoint state or None, first step), checked before anything is built."""
    if args.resume:
        state, config = read_checkpoint_within(args.resume, limit)
        if state["step"] >= args.steps:
            raise CliError(f"checkpoint {args.resume} is at step {state['step']}, and --steps "
                           f"{args.steps} is the total to reach: nothing to train (give --steps "
                           f"above {state['step']})")
        return state["kind"], config, state, state["step"]
    if not args.config:
        raise CliError("give --config NAME (or --resume CHECKPOINT)")
    config = PRESETS[args.config]
    if args.audio:
        config = config.replace(audio=args.audio)
    return args.model, config, None, 0


def _check_memory(args, kind, config, limit):
    try:
        counts = frame_counts(config, args.clip_seconds)
    except ValueError as exc:
        raise CliError(f"--clip-seconds: {exc}") from None
    estimate = run_memory(config, kind, counts, batch=args.batch_size, training=True,
                          recompute=args.recompute)
    check_fits(estimate, limit, f"a training step on {args.batch_size} clip(s) of "
                                f"{counts.seconds:g} s ({counts.audio} audio frames each)")


def _build(args, kind, config, state):
    """(model, optimizer state or None, train_state or None)."""
    if state is not None:
        ckpt = model_from_checkpoint(args.resume, state, config)
        return ckpt.model, ckpt.optimizer_state, ckpt.train_state
    torch.manual_seed(args.seed)
    return build_model(config, kind), None, None


def _source(args, config, info):
    if args.synthetic:
        return SyntheticSource(config, args.clip_seconds, seed=args.seed)
    return FeatureFileSource(feature_paths(args.features), config, args.clip_seconds,
                             info.rank, info.world_size)


def _run(args):
    info = init_distributed(args.device)
    try:
        return _train(args, info)
    except INPUT_ERRORS as exc:
        return report_error("train", exc)
    finally:
        shutdown_distributed()


def _train(args, info):
    check_output_path(args.out, "--out")
    limit = memory_limit(info.device, args.memory_limit_gib)
    kind, config, state, start = _plan(args, limit)
    _check_memory(args, kind, config, limit)
    source = _source(args, config, info)
    model, optimizer_state, train_state = _build(args, kind, config, state)
    model.to(info.device).set_recompute(args.recompute)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CliError(f"checkpoint {args.resume}: its optimizer state does not fit the "
                           f"model ({exc})") from None
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
    train(wrap_model(model, info), optimizer, source, settings, info, start_step=start,
          train_state=train_state)
    if info.is_main:
        print(f"wrote {args.out} (step {args.steps})")
    return 0


def add_train_command(sub):
    p = sub.add_parser("train", help="train MMHNet (or the baseline) by flow matching",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(PRESETS), help="preset to train from scratch")
    p.add_argument("--resume", help="continue from a checkpoint (its config, step, optimizer "
                   "and random-number states: the result equals an uninterrupted run)")
    p.add_argument("--model", choices=list(MODEL_KINDS), default="mmhnet")
    p.add_argument("--audio", choices=["16k", "44k"], help="audio format (default: the preset's)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", nargs="+", help="feature files, directories or globs "
                     "(.pt, layout in docs/model.md; 'latent' required)")
    src.add_argument("--synthetic", action="store_true", help="the synthetic event task")
    p.add_argument("--out", required=True, help="checkpoint file to write (its directory must "
                   "exist; checked before training)")
    p.add_argument("--steps", type=positive_int, default=1000,
                   help="total optimizer steps (with --resume: the total to reach)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per process and step")
    p.add_argument("--clip-seconds", type=duration, default=8.0,
                   help="training clip length")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="0: no clipping")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=50)
    p.add_argument("--log-every", type=nonnegative_int, default=50, help="0: the last step only")
    p.add_argument("--save-every", type=nonnegative_int, default=0,
                   help="0: save at the end only")
    p.add_argument("--recompute", action="store_true", help="gradient checkpointing")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", type=device_arg,
                   help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--memory-limit-gib", type=positive_float,
                   help="refuse a run whose estimated memory exceeds this (default: 90%% of the "
                        "memory available)")
    p.set_defaults(func=_run)
