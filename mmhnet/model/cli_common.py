"""What every ``mmhnet`` subcommand shares: argument types that refuse bad numbers at parse time
(argparse's own exit status 2 and message), the check of an output path before any work, and
the one-line ``error:`` report of a bad input.

    p.add_argument("--steps", type=positive_int)
    check_output_path(args.out, "--out")          # raises CliError before training starts
"""

import argparse
import math
import os
import sys
import tempfile

import torch

__all__ = ["CliError", "report_error", "positive_int", "nonnegative_int", "seed_int",
           "positive_float", "nonnegative_float", "duration", "device_arg",
           "check_output_path"]

MAX_SEED = 2**32 - 1    # the training loop seeds torch.Generator with seed * 1000 + rank
MAX_SECONDS = 1e12      # a duration past this is a typo; below it, the memory check decides


class CliError(Exception):
    """A bad input found by a command: reported as one ``error:`` line, exit status 2."""


def report_error(command, exc):
    """Print ``mmhnet COMMAND: error: MESSAGE`` on stderr; returns the exit status 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"mmhnet {command}: error: {message}", file=sys.stderr)
    return 2


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def seed_int(text):
    """argparse type: a seed in [0, 2**32)."""
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (nan and inf refused)."""
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text):
    """argparse type: a finite number >= 0 (nan and inf refused)."""
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def duration(text):
    """argparse type: a clip duration in seconds, finite, > 0 and at most MAX_SECONDS (longer
    ones that are still absurd are refused later, with the memory estimate)."""
    value = positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:g} s, got {text!r}")
    return value


def device_arg(text):
    """argparse type: a torch device string whose device exists here ('cpu', 'cuda', 'cuda:1')."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (e.g. cpu, cuda, cuda:0)") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda devices are supported")
    return text


def check_output_path(path, option):
    """Check, before any work, that a file can be written at ``path``: its directory exists and
    takes a new file (tried for real: a temporary file is created and removed), and ``path`` is
    not a directory or another non-regular file. Raises CliError naming ``option``."""
    if not path:
        raise CliError(f"{option}: empty path")
    if os.path.isdir(path):
        raise CliError(f"{option} {path} is a directory; give a file path")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise CliError(f"{option} {path} exists and is not a regular file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise CliError(f"{option} {path}: the directory {directory} {what}")
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".mmhnet-write-check-")
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot create a file in {directory} "
                       f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
