"""mmhnet: Triton, CUDA and C++ kernels for non-causal (bidirectional) hierarchical Mamba, and
the thin MMHNet video-to-audio model built on them. See shared/DESIGN.md for the contract."""

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
