"""mmhnet: Triton, CUDA and C++ kernels for non-causal (bidirectional) hierarchical Mamba, and
the thin MMHNet video-to-audio model built on them. See shared/DESIGN.md for the contract.

The public ops (``mmhnet.ops``) and layers (``mmhnet.layers``) are also importable from the
package itself, as mamba_ssm exports its ops and Mamba2: ``from mmhnet import bi_selective_scan,
BiMamba2``. The model stays in ``mmhnet.model``."""

__version__ = "0.1.0"

from . import layers, ops  # noqa: E402
from .layers import BiMamba2, DynamicChunking, HNet  # noqa: E402
from .ops import (BackendUnavailableError, bi_selective_scan, chunk_gather,  # noqa: E402
                  chunk_scatter, ema_smooth, ratio_loss, route_and_gather, route_boundaries,
                  selective_scan, token_gather, token_scatter)

__all__ = [
    "ops",
    "layers",
    "selective_scan",
    "bi_selective_scan",
    "route_boundaries",
    "chunk_gather",
    "route_and_gather",
    "chunk_scatter",
    "ema_smooth",
    "token_gather",
    "token_scatter",
    "ratio_loss",
    "BackendUnavailableError",
    "BiMamba2",
    "DynamicChunking",
    "HNet",
]
