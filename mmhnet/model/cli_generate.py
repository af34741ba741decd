"""``mmhnet generate``: sample audio latents for features of any duration.

    mmhnet generate --config tiny --seconds 300 --synthetic --out latents.pt      # (1, 9375, 20)
    mmhnet generate --checkpoint run.pt --features clip.pt --out latents.pt

Everything is checked before sampling: the arguments, the output path, the checkpoint, the
feature file's layout, and the memory the run needs (cli_memory.py). A bad input is one
``error:`` line and exit status 2.
"""

import os
import sys
import time

import torch

from .build import MODEL_KINDS, build_model
from .checkpoint import CheckpointError, model_from_checkpoint, write_atomically
from .cli_common import (CliError, check_output_path, device_arg, duration, nonnegative_float,
                         positive_float, positive_int, report_error, seed_int)
from .cli_memory import check_fits, format_gib, memory_limit, read_checkpoint_within, run_memory
from .config import PRESETS
from .features import Conditions, FeatureError, finish_features, frame_counts, read_feature_file
from .flow import DEFAULT_CFG_SCALE, DEFAULT_STEPS, euler_sample
from .progress import TextProgress
from .synthetic import SyntheticTask

__all__ = ["add_generate_command"]

INPUT_ERRORS = (CliError, CheckpointError, FeatureError, FileNotFoundError)


def _plan_model(args, limit):
    """(kind, config, checkpoint state or None), read and checked, nothing built."""
    if args.checkpoint:
        state, config = read_checkpoint_within(args.checkpoint, limit)
        if args.config and args.config != config.name:
            raise CliError(f"--config {args.config} does not match the checkpoint's config "
                           f"{config.name!r}; leave --config out")
        return state["kind"], config, state
    if not args.config:
        raise CliError("give --config NAME (untrained weights) or --checkpoint FILE")
    config = PRESETS[args.config]
    if args.audio:
        config = config.replace(audio=args.audio)
    return args.model, config, None


def _plan_inputs(args, config, limit):
    """(FrameCounts, feature dict as read or None) of the clip to generate."""
    if args.features:
        size = os.path.getsize(args.features) if os.path.isfile(args.features) else 0
        if limit[0] is not None and size > limit[0]:
            raise CliError(f"refused: feature file {args.features} is {format_gib(size)}, more "
                           f"than the {format_gib(limit[0])} allowed ({limit[1]})")
        features, counts = read_feature_file(args.features, config)
        if args.seconds is not None and frame_counts(config, args.seconds) != counts:
            raise CliError(f"--seconds {args.seconds} does not match the feature file, which "
                           f"holds {counts.seconds:g} s; leave --seconds out")
        return counts, features
    if args.seconds is None:
        raise CliError("--synthetic needs --seconds N")
    try:
        return frame_counts(config, args.seconds), None
    except ValueError as exc:
        raise CliError(f"--seconds: {exc}") from None


def _conditions(args, config, features):
    if features is not None:
        features = finish_features(features, args.features)
        return Conditions(features["visual"][None], features["sync"][None],
                          features["text"][None])
    generator = torch.Generator().manual_seed(args.seed)
    task = SyntheticTask(config, seed=args.seed)
    return task.sample(args.seconds, generator=generator).conditions


def _model(args, kind, config, state):
    if state is not None:
        return model_from_checkpoint(args.checkpoint, state, config).model
    print(f"mmhnet generate: no --checkpoint, so the {args.config} model has untrained random "
          "weights (no pretrained weights can be downloaded)", file=sys.stderr)
    torch.manual_seed(args.seed)
    return build_model(config, kind)


def _run(args):
    try:
        return _generate(args)
    except INPUT_ERRORS as exc:
        return report_error("generate", exc)


def _generate(args):
    check_output_path(args.out, "--out")
    limit = memory_limit(args.device, args.memory_limit_gib)
    kind, config, state = _plan_model(args, limit)
    counts, features = _plan_inputs(args, config, limit)
    passes = 1 if args.cfg_scale == 1 else 2
    check_fits(run_memory(config, kind, counts, batch=1, training=False, passes=passes), limit,
               f"sampling {counts.seconds:g} s ({counts.audio} audio frames, {passes} pass(es) "
               f"per step)")
    model = _model(args, kind, config, state).to(args.device).eval()
    conditions = _conditions(args, config, features).to(args.device)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    latents = euler_sample(model, conditions, steps=args.steps, cfg_scale=args.cfg_scale,
                           generator=generator, progress=TextProgress("sampling"))
    write_atomically(args.out, lambda f: torch.save(latents.cpu(), f))
    fmt = config.audio_format
    print(f"wrote {args.out}: latents {tuple(latents.shape)} "
          f"({latents.shape[1] / fmt.frame_rate:g} s at {fmt.frame_rate:g} Hz) in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def add_generate_command(sub):
    p = sub.add_parser("generate", help="sample audio latents for features of any duration",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=list(PRESETS), help="preset (untrained weights unless "
                   "--checkpoint is given)")
    p.add_argument("--checkpoint", help="a checkpoint written by mmhnet train")
    p.add_argument("--model", choices=list(MODEL_KINDS), default="mmhnet",
                   help="model kind for --config (default: mmhnet)")
    p.add_argument("--audio", choices=["16k", "44k"], help="audio format for --config "
                   "(default: the preset's)")
    p.add_argument("--seconds", type=duration,
                   help="duration (required with --synthetic)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="a feature file (.pt, layout in docs/model.md)")
    src.add_argument("--synthetic", action="store_true",
                     help="synthetic features of the synthetic event task")
    p.add_argument("--out", required=True, help="output file: torch.save of (1, frames, channels) "
                   "(its directory must exist; checked before sampling)")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                   help="Euler steps (default 25)")
    p.add_argument("--cfg-scale", type=nonnegative_float, default=DEFAULT_CFG_SCALE,
                   help="classifier-free guidance scale (1: none; default 4.5)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--memory-limit-gib", type=positive_float,
                   help="refuse a run whose estimated memory exceeds this (default: 90%% of the "
                        "memory available)")
    p.set_defaults(func=_run)
