"""Argument checks of the layers' forward inputs. Every message names the argument.

Only metadata is read (shapes, dtypes), so the checks also run under torch.compile.
"""

import torch


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
