"""mmhnet's public functional ops (DESIGN.md): argument checks, backend dispatch, autograd and
torch.library registration. References of every op: ``mmhnet.ops.reference``."""

from ._backend import BACKENDS, BackendUnavailableError, resolve_backend
from .routing import (chunk_gather, chunk_scatter, ema_smooth, ratio_loss, route_and_gather,
                      route_boundaries, token_gather, token_scatter)
from .scan import bi_selective_scan, selective_scan

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "resolve_backend",
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
]
