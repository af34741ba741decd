"""Output allocation for the kernel launchers.

With MMHNET_POISON=1 (the test suite sets it) outputs start as NaN (floats) or -1 (integers)
instead of uninitialised memory, so an element a kernel forgets to write cannot pass a test.
"""

import os

import torch


def poisoning():
    return os.environ.get("MMHNET_POISON", "0") == "1"


def empty(shape, dtype, device):
    """Like torch.empty, but NaN/-1 filled under MMHNET_POISON=1."""
    if not poisoning():
        return torch.empty(shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape, fill, dtype=dtype, device=device)


def empty_like(t, dtype=None):
    return empty(t.shape, dtype or t.dtype, t.device)
