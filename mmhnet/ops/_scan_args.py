"""The argument and gradient bundles of the scan ops, shared by the op layer and the backends."""

from typing import NamedTuple, Optional

import torch

# directions of mmhnet::bi_scan
FORWARD, REVERSE, BOTH = 1, 2, 3
MODES = ("sum", "quasiseparable")


class ScanArgs(NamedTuple):
    """Everything one scan call needs; None marks an absent optional input.

    A reverse-direction parameter that is None means "same as the forward one".
    directions: FORWARD (1), REVERSE (2) or BOTH (3). quasi: Hydra's shifted combination.
    """
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    dt_bias: Optional[torch.Tensor]
    dt_rev: Optional[torch.Tensor]
    A_rev: Optional[torch.Tensor]
    B_rev: Optional[torch.Tensor]
    C_rev: Optional[torch.Tensor]
    cu_seqlens: Optional[torch.Tensor]
    dt_softplus: bool
    directions: int
    quasi: bool


class ScanGrads(NamedTuple):
    """Gradients for the tensor inputs of ScanArgs (None where the input is absent)."""
    dx: torch.Tensor
    ddt: torch.Tensor
    dA: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor
    dD: Optional[torch.Tensor]
    dz: Optional[torch.Tensor]
    ddt_bias: Optional[torch.Tensor]
    ddt_rev: Optional[torch.Tensor]
    dA_rev: Optional[torch.Tensor]
    dB_rev: Optional[torch.Tensor]
    dC_rev: Optional[torch.Tensor]
