"""The benchmark runner behind ``make bench``: every section's tables, printed as markdown.

    python -m benchmarks.run                 # all sections, CUDA if present else CPU
    python -m benchmarks.run --only scan     # some sections
    python -m benchmarks.run --only threads  # opt-in: a training step beside a competing load
    python -m benchmarks.run --full          # the long sweeps (CPU: over an hour, ~11 GiB)
    python -m benchmarks.run --quick         # the short sizes (the default on CPU)
    python -m benchmarks.run --out DIR       # also write each table to DIR/<section>.md
    python -m benchmarks.run --warmup mamba  # one untimed call (compiles, autotuning), then exit

On CPU the default is the short plan (--quick sizes: `make bench` in minutes, its first table
within the first few), on CUDA the full one. Between sections a progress line says what runs
next, the time so far and an estimate of the rest.

Each section is a function ``run(device, quick) -> [Table]`` of ``benchmarks/bench_<name>.py``
("target" is ``bench_scan.run_target``: the issue-2 target table, GPU only).
"""

import argparse
import importlib
import os
import sys
import time

import torch

from .common import machine_description, sync, today

SECTIONS = ["target", "scan", "scan_cpu", "precision", "layers", "routing", "profile"]
# run only when named (--only threads): it loads one core with a spinning process for minutes
OPT_IN_SECTIONS = ["threads"]
# section -> (module, function) where it is not bench_<section>.run
SECTION_FUNCTIONS = {"target": ("bench_scan", "run_target")}
WARMUPS = ("ours", "mamba", "fla")
# Seconds each section took in the short CPU plan, measured once on 2 cores shared with other
# jobs (benchmarks/RESULTS.md, "make bench"): only their ratios matter, the progress lines scale
# them by how fast this run has gone so far. "threads" is opt-in, not in SECTIONS.
TYPICAL_SECONDS = {"target": 1, "scan": 89, "scan_cpu": 120, "precision": 39, "layers": 373,
                   "routing": 630, "profile": 358, "threads": 300}


def progress_line(done, sections, elapsed, spent):
    """'[i/n] <next section> ...' with the time so far and an estimate of the rest: the typical
    times of what is left, scaled by this run's speed on what is done (1x before anything)."""
    typical_done = sum(TYPICAL_SECONDS.get(s, 60) for s in sections[:done])
    speed = spent / typical_done if typical_done else 1.0
    left = speed * sum(TYPICAL_SECONDS.get(s, 60) for s in sections[done:])
    return (f"> [{done + 1}/{len(sections)}] {sections[done]}: running; {elapsed:.0f} s so far, "
            f"about {left:.0f} s left")


def section_tables(name, device, quick):
    module, function = SECTION_FUNCTIONS.get(name, (f"bench_{name}", "run"))
    return getattr(importlib.import_module(f"benchmarks.{module}"), function)(device, quick)


def warm_up(name, device, batch=8, tokens=9375):
    """One untimed forward + backward of ``name`` (one of WARMUPS) at the target table's first
    shape (bf16, batch 8, 9375 tokens), so that its Triton compiles and autotuning land in the
    on-disk cache before a timed run; scripts/gpu_check.sh gives each its own deadline.
    Raises RuntimeError when the baseline cannot be imported."""
    from . import bench_scan

    if name == "ours":
        fn = bench_scan._ours("triton")
    elif name == "mamba":
        fns, why = bench_scan._mamba_two_pass()
        fn = fns[0] if fns else None
    else:
        fn, why = bench_scan._fla_two_pass()
    if fn is None:
        raise RuntimeError(why)
    args = bench_scan.make_inputs(batch, tokens, torch.device(device), torch.bfloat16)
    bench_scan._fwd_bwd(fn, args)()
    sync(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"sections among {SECTIONS} (default: all), "
                             f"or opt-in {OPT_IN_SECTIONS}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    plan = parser.add_mutually_exclusive_group()
    plan.add_argument("--quick", action="store_true", default=None,
                      help="short sizes (the default on CPU)")
    plan.add_argument("--full", action="store_true", help="the long sweeps (the default on CUDA)")
    parser.add_argument("--out", default=None, help="folder to write <section>.md tables into")
    parser.add_argument("--warmup", choices=WARMUPS, default=None,
                        help="only one untimed call of ours (triton) or a baseline, then exit")
    args = parser.parse_args(argv)
    if args.warmup:
        try:
            warm_up(args.warmup, args.device)
        except RuntimeError as err:
            print(f"warm-up {args.warmup}: not available: {err}", flush=True)
            return 3
        print(f"warm-up {args.warmup}: done", flush=True)
        return 0
    quick = not args.full and (args.quick or torch.device(args.device).type != "cuda")
    sections = args.only or SECTIONS
    header = (f"Machine: {machine_description(args.device)}; date {today()}; "
              f"{'short' if quick else 'full'} plan")
    print(header + "\n", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    start, spent = time.perf_counter(), 0.0
    for done, name in enumerate(sections):
        print(progress_line(done, sections, time.perf_counter() - start, spent) + "\n", flush=True)
        t0 = time.perf_counter()
        tables = section_tables(name, args.device, quick)
        spent += time.perf_counter() - t0
        text = "\n".join(t.render() for t in tables)
        print(text, flush=True)
        if args.out:
            with open(os.path.join(args.out, f"{name}.md"), "w") as f:
                f.write(header + "\n\n" + text)
    print(f"> done: {len(sections)} sections in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
