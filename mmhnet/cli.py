"""The ``mmhnet`` command line: ``build_parser`` adds ``info`` here, the model's commands
(mmhnet.model.cli) and the profile (mmhnet.profile.cli).

Bad input never ends in a traceback: arguments are checked by argparse types, and every command
checks its files and outputs before it works, reporting a problem as one ``error:`` line with
exit status 2. Warnings are printed as one ``warning:`` line each.
"""

import argparse
import sys
import warnings

USAGE = ("Bidirectional hierarchical Mamba kernels and the MMHNet video-to-audio model. Bad "
         "arguments and files are reported as one 'error:' line (exit status 2), before any work "
         "starts.")


def _info(args):
    import torch

    from .model.cli_common import report_error
    from .ops._backend import BackendUnavailableError, native_module, triton_available

    try:
        cpu_mod = native_module("_C")  # the ISA build in use (MMHNET_CPU_ISA may refuse)
    except (ValueError, BackendUnavailableError) as exc:
        return report_error("info", exc)
    print(f"mmhnet {__import__('mmhnet').__version__}, torch {torch.__version__}")
    print(f"  triton:          {'yes' if triton_available() else 'no'}")
    print(f"  mmhnet._C:       {'built' if cpu_mod else 'not built'}")
    if cpu_mod is not None:
        print(f"  CPU kernels:     {cpu_mod.__name__} (ISA {cpu_mod.ISA}; this CPU has AVX-512: "
              f"{'yes' if cpu_mod.cpu_supports_avx512() else 'no'})")
    print(f"  OpenMP waiting:  {_wait_policy()}")
    cuda_mod = native_module("_C_cuda")
    print(f"  mmhnet._C_cuda:  {'built' if cuda_mod else 'not built'}")
    print(f"  CUDA device:     {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    return 0


def _wait_policy():
    """The OpenMP wait policy the process runs with, and who chose it (mmhnet/__init__.py)."""
    import os

    import mmhnet

    chosen = [f"{v}={os.environ[v]}" for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
              if os.environ.get(v)]
    if not chosen:
        return "libgomp's default (spin, then sleep): torch was imported before mmhnet"
    return ", ".join(chosen) + (" (set by mmhnet)" if mmhnet.THREAD_POLICY_SET else " (yours)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mmhnet", description=USAGE,
        epilog="Run 'mmhnet COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show the installed backends")
    p.set_defaults(func=_info)
    from .model.cli import add_model_commands  # presets, train, generate

    add_model_commands(sub)
    from .profile.cli import add_parser as add_profile_command  # memory and time profile

    add_profile_command(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"mmhnet: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
