"""``mmhnet profile``: memory and time of long clips, MMHNet beside its attention baseline.

    mmhnet profile --config S --seconds 8 30 60 120 300 --json out.json --png out.png
    mmhnet profile --config S --seconds 300 --modes train_step --checkpointing
"""

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers):
    """Register the ``profile`` subcommand on an argparse subparsers object."""
    from .workloads import MODEL_NAMES, MODES

    p = subparsers.add_parser("profile", help="peak memory and time against clip duration",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="S", help="model preset (tiny, S, M, L); default S")
    p.add_argument("--seconds", type=float, nargs="+", default=[8, 30, 60, 120, 300],
                   help="clip durations in seconds (default 8 30 60 120 300)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["sample_step"],
                   help="what to run: one sampling step, full sampling, a training step")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                   help="MMHNet and/or the same-size attention baseline (default both)")
    p.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps of full sampling")
    p.add_argument("--checkpointing", action="store_true",
                   help="recompute every block in the backward pass of training")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help="refuse points whose estimated peak exceeds this (default: 90%% of the "
                        "memory available when each point starts)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for the whole sweep: skip points estimated to run past it")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--png", default=None, help="write the memory plot to this PNG (matplotlib)")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args):
    from . import plot_memory, profile, progress_line, render_report, write_json

    if args.png:  # fail before the sweep, not after it, when matplotlib is missing
        from .plot import _pyplot
        _pyplot()
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
