"""The benchmark runner behind ``make bench``: every section's tables, printed as markdown.

    python -m benchmarks.run                 # all sections, CUDA if present else CPU
    python -m benchmarks.run --only scan     # some sections
    python -m benchmarks.run --quick         # smaller sizes, for a smoke run
    python -m benchmarks.run --out DIR       # also write each table to DIR/<section>.md

Each section is a module ``benchmarks/bench_<name>.py`` with ``run(device, quick) -> [Table]``.
"""

import argparse
import importlib
import os
import sys

import torch

from .common import machine_description, today

SECTIONS = ["scan", "scan_cpu", "precision", "layers", "routing", "profile"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help=f"sections among {SECTIONS}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="folder to write <section>.md tables into")
    args = parser.parse_args(argv)
    sections = args.only or SECTIONS
    header = f"Machine: {machine_description(args.device)}; date {today()}"
    print(header + "\n", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    for name in sections:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        tables = module.run(args.device, args.quick)
        text = "\n".join(t.render() for t in tables)
        print(text, flush=True)
        if args.out:
            with open(os.path.join(args.out, f"{name}.md"), "w") as f:
                f.write(header + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
