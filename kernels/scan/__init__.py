"""Fused bidirectional chunked (SSD) selective scan in Triton: forward and backward."""

from .launch import CHUNK_SIZE, Direction, DirectionGrads, ScanGradsRaw, scan_bwd, scan_fwd

__all__ = ["CHUNK_SIZE", "Direction", "DirectionGrads", "ScanGradsRaw", "scan_fwd", "scan_bwd"]
