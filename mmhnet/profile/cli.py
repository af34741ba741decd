"""``mmhnet profile``: memory and time of long clips, MMHNet beside its attention baseline.

    mmhnet profile --config S --seconds 8 30 60 120 300 --json out.json --png out.png
    mmhnet profile --config S --seconds 300 --modes train_step --checkpointing
"""

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers):
    """Register the ``profile`` subcommand on an argparse subparsers object."""
    from mmhnet.model.cli_common import device_arg, duration, positive_float, positive_int
    from mmhnet.model.config import PRESETS

    from .workloads import MODEL_NAMES, MODES

    p = subparsers.add_parser("profile", help="peak memory and time against clip duration",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="S", choices=list(PRESETS),
                   help="model preset (tiny, S, M, L); default S")
    p.add_argument("--seconds", type=duration, nargs="+", default=[8, 30, 60, 120, 300],
                   help="clip durations in seconds (default 8 30 60 120 300)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["sample_step"],
                   help="what to run: one sampling step, full sampling, a training step")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                   help="MMHNet and/or the same-size attention baseline (default both)")
    p.add_argument("--batch", type=positive_int, default=1, help="clips per step (default 1)")
    p.add_argument("--steps", type=positive_int, default=25, help="Euler steps of full sampling")
    p.add_argument("--checkpointing", action="store_true",
                   help="recompute every block in the backward pass of training")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu or cuda (default: cuda if available)")
    p.add_argument("--memory-limit-gib", type=positive_float, default=None,
                   help="refuse points whose estimated peak exceeds this (default: 90%% of the "
                        "memory available when each point starts)")
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="seconds for the whole sweep: skip points estimated to run past it")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--png", default=None, help="write the memory plot to this PNG (matplotlib)")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args):
    from mmhnet.model.cli_common import CliError, report_error

    try:
        _check_outputs(args)
    except CliError as exc:
        return report_error("profile", exc)
    return _sweep(args)


def _check_outputs(args):
    """Before the sweep, not after it: the output paths can be written, and matplotlib is
    there for --png."""
    from mmhnet.model.cli_common import CliError, check_output_path

    from .plot import _pyplot

    for option, path in (("--json", args.json), ("--png", args.png)):
        if path is not None:
            check_output_path(path, option)
    if args.png:
        try:
            _pyplot()
        except RuntimeError as exc:
            raise CliError(f"--png: {exc}") from None


def _sweep(args):
    from . import plot_memory, profile, progress_line, render_report, write_json

    limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2**30)
    records = profile(args.config, args.seconds, args.modes, args.models, batch=args.batch,
                      steps=args.steps, checkpointing=args.checkpointing, device=args.device,
                      memory_limit=limit, time_budget=args.time_budget,
                      on_record=lambda r: print(progress_line(r), flush=True))
    print()
    print(render_report(records, f"Memory and time profile, config {args.config}"))
    if args.json:
        write_json(records, args.json)
        print(f"records written to {args.json}")
    if args.png:
        plot_memory(records, args.png, f"Peak memory, config {args.config}", limit)
        print(f"plot written to {args.png}")
    return 1 if any(r.status == "failed" for r in records) else 0
