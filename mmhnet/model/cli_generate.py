"""``mmhnet generate``: sample audio latents for features of any duration.

    mmhnet generate --config tiny --seconds 300 --synthetic --out latents.pt      # (1, 9375, 20)
    mmhnet generate --checkpoint run.pt --features clip.pt --out latents.pt
"""

import sys
import time

import torch

from .build import MODEL_KINDS, build_model
from .checkpoint import load_checkpoint
from .config import PRESETS
from .features import Conditions, FeatureError, frame_counts, load_feature_file
from .flow import DEFAULT_CFG_SCALE, DEFAULT_STEPS, euler_sample
from .progress import TextProgress
from .synthetic import SyntheticTask

__all__ = ["add_generate_command"]


class UsageError(Exception):
    """A command-line mistake, reported as one line on stderr (exit status 2)."""


def _load_model(args):
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        if args.config and args.config != ckpt.model.config.name:
            raise UsageError(f"--config {args.config} does not match the checkpoint's config "
                             f"{ckpt.model.config.name!r}; leave --config out")
        return ckpt.model
    if not args.config:
        raise UsageError("give --config NAME (untrained weights) or --checkpoint FILE")
    print(f"mmhnet generate: no --checkpoint, so the {args.config} model has untrained random "
          "weights (no pretrained weights can be downloaded)", file=sys.stderr)
    torch.manual_seed(args.seed)
    return build_model(args.config, args.model, audio=args.audio or PRESETS[args.config].audio)


def _conditions(args, config):
    if args.features:
        features, counts = load_feature_file(args.features, config)
        if args.seconds is not None and frame_counts(config, args.seconds) != counts:
            raise UsageError(f"--seconds {args.seconds} does not match the feature file, which "
                             f"holds {counts.seconds:g} s; leave --seconds out")
        return Conditions(features["visual"][None], features["sync"][None],
                          features["text"][None])
    if args.seconds is None:
        raise UsageError("--synthetic needs --seconds N")
    generator = torch.Generator().manual_seed(args.seed)
    return SyntheticTask(config, seed=args.seed).sample(args.seconds, generator=generator).conditions


def _run(args):
    try:
        model = _load_model(args).to(args.device).eval()
        conditions = _conditions(args, model.config).to(args.device)
    except (UsageError, FeatureError, FileNotFoundError, ValueError) as exc:
        print(f"mmhnet generate: error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    latents = euler_sample(model, conditions, steps=args.steps, cfg_scale=args.cfg_scale,
                           generator=generator, progress=TextProgress("sampling"))
    torch.save(latents.cpu(), args.out)
    fmt = model.config.audio_format
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
    p.add_argument("--seconds", type=float, help="duration (required with --synthetic)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="a feature file (.pt, layout in docs/model.md)")
    src.add_argument("--synthetic", action="store_true",
                     help="synthetic features of the synthetic event task")
    p.add_argument("--out", required=True, help="output file: torch.save of (1, frames, channels)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Euler steps (default 25)")
    p.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG_SCALE,
                   help="classifier-free guidance scale (1: none; default 4.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)
