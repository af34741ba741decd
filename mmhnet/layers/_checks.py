"""Argument checks of the layers' constructor arguments and forward inputs. Every message names
the argument.

Forward checks read metadata only (shapes, dtypes), so they also run under torch.compile; the
one value check, ``check_mask_contiguous``, syncs once per mask tensor and is skipped while
compiling.
"""

import torch

from mmhnet.ops import BACKENDS
from mmhnet.ops._checks import already_validated, check_choice, remember_validated


def check_backend(backend):
    """None (mmhnet's default for the device) or a backend name, checked when a layer is built
    rather than at its first forward."""
    if backend is not None:
        check_choice("backend", backend, BACKENDS)


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_param_dtype(x, weight, name="x"):
    """Outside autocast, a layer's input must have its parameters' dtype (torch's own error,
    from deep inside F.linear, names neither)."""
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's parameters are "
                        f"{weight.dtype}; convert one of them (module.to(dtype)) or use autocast")


def check_mask_contiguous(mask):
    """The real tokens of each row of mask (batch, seqlen) must be one run (padding on the
    left, the right or both): the scans and convs of a padded batch treat the run as one
    sequence. One host sync per mask tensor; skipped under torch.compile."""
    if torch.compiler.is_compiling() or already_validated(mask, "contiguous mask"):
        return
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    runs = starts.sum(1)
    if mask.numel() and int(runs.max()) > 1:
        row = int(runs.argmax())
        raise ValueError(f"mask row {row} has {int(runs[row])} separate runs of real tokens; "
                         f"the real tokens of each row must be contiguous (padding only at the "
                         f"ends)")
    remember_validated(mask, "contiguous mask")


def check_tokens(x, d_model, cu_seqlens=None, mask=None, name="x"):
    """Check a layer input: x (batch, seqlen, d_model); cu_seqlens packs along seqlen with
    batch 1; mask (batch, seqlen) bool marks the real tokens of a padded batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have 3 dimensions (batch, seqlen, d_model={d_model}), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} must have d_model={d_model} features in its last dimension, "
                         f"got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
            raise ValueError("cu_seqlens must be a 1-D integer tensor of packed offsets "
                             "(0, len_0, len_0 + len_1, ...)")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if x.shape[0] != 1:
            raise ValueError(f"cu_seqlens packs sequences along the length, so {name} must have "
                             f"batch 1; got {name} of shape {tuple(x.shape)}")
        if mask is not None:
            raise ValueError("pass either cu_seqlens (packed sequences) or mask (padded batch), "
                             "not both")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (batch, seqlen), True for real tokens")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (batch, seqlen of {name}), "
                             f"got {tuple(mask.shape)}")
