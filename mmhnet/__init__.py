"""mmhnet: Triton, CUDA and C++ kernels for non-causal (bidirectional) hierarchical Mamba, and
the thin MMHNet video-to-audio model built on them. See docs/DESIGN.md for the contract.

The public ops (``mmhnet.ops``) and layers (``mmhnet.layers``) are also importable from the
package itself, as mamba_ssm exports its ops and Mamba2: ``from mmhnet import bi_selective_scan,
BiMamba2``. The model stays in ``mmhnet.model``."""

__version__ = "0.1.0"

import os as _os
import sys as _sys


def _set_thread_wait_policy():
    """Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the user
    chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT). torch and mmhnet._C share one libgomp,
    which reads these once, when ``import torch`` loads it: so this runs before that, and does
    nothing when torch is already imported. Spinning threads on a machine shared with other
    work made a training step 5x slower (docs/DESIGN.md, "Threads"). Returns whether it set it.
    """
    user_set = any(_os.environ.get(v) for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    if "torch" in _sys.modules or user_set:
        return False
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


THREAD_POLICY_SET = _set_thread_wait_policy()  # shown by `mmhnet info`

from . import layers, ops  # noqa: E402
from .layers import BiMamba2, DynamicChunking, HNet  # noqa: E402
from .ops import *  # noqa: E402,F401,F403  (all of ops.__all__)

__all__ = ["ops", "layers", *ops.__all__, "BiMamba2", "DynamicChunking", "HNet"]
