"""The ``mmhnet`` command line. Subcommands register themselves in ``COMMANDS``.

Bad input never ends in a traceback: arguments are checked by argparse types, and every command
checks its files and outputs before it works, reporting a problem as one ``error:`` line with
exit status 2. Warnings are printed as one ``warning:`` line each.
"""

import argparse
import sys
import warnings


def _info(args):
    import torch

    from .ops._backend import native_module, triton_available

    print(f"mmhnet {__import__('mmhnet').__version__}, torch {torch.__version__}")
    print(f"  triton:          {'yes' if triton_available() else 'no'}")
    print(f"  mmhnet._C:       {'built' if native_module('_C') else 'not built'}")
    cuda_mod = native_module("_C_cuda")
    print(f"  mmhnet._C_cuda:  {'built' if cuda_mod else 'not built'}")
    print(f"  CUDA device:     {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="mmhnet", description=__doc__)
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
