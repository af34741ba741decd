"""mmhnet: Triton, CUDA and C++ kernels for non-causal (bidirectional) hierarchical Mamba, and
the thin MMHNet video-to-audio model built on them. See shared/DESIGN.md for the contract.

The public ops (``mmhnet.ops``) and layers (``mmhnet.layers``) are also importable from the
package itself, as mamba_ssm exports its ops and Mamba2: ``from mmhnet import bi_selective_scan,
BiMamba2``. The model stays in ``mmhnet.model``."""

__version__ = "0.1.0"

from . import layers, ops  # noqa: E402
from .layers import BiMamba2, DynamicChunking, HNet  # noqa: E402
from .ops import *  # noqa: E402,F401,F403  (all of ops.__all__)

__all__ = ["ops", "layers", *ops.__all__, "BiMamba2", "DynamicChunking", "HNet"]
