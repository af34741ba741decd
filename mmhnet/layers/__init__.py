"""Drop-in nn.Modules built only on mmhnet.ops (DESIGN.md, "Layers"): BiMamba2,
DynamicChunking, HNet and their small parts. Usage and options: docs/layers.md."""

from .bimamba2 import HYDRA_OPTIONS, VIM_OPTIONS, BiMamba2
from .blocks import Block, Isotropic, parse_layout
from .conv import DepthwiseConv1d
from .dynamic_chunking import DynamicChunking, Routing
from .hnet import HNet, HNetOutput
from .mlp import SwiGLU
from .norms import RMSNorm, RMSNormGated, gated_rms_norm_linear

__all__ = [
    "BiMamba2",
    "HYDRA_OPTIONS",
    "VIM_OPTIONS",
    "DynamicChunking",
    "Routing",
    "HNet",
    "HNetOutput",
    "Block",
    "Isotropic",
    "parse_layout",
    "SwiGLU",
    "DepthwiseConv1d",
    "RMSNorm",
    "RMSNormGated",
    "gated_rms_norm_linear",
]
