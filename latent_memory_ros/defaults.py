"""Defaults the ROS-free runtime shares with the node's parameters, in a module that
imports nothing, so the parameter list (and the launch file that reads it) loads without
onnxruntime or OpenCV."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_PROVIDERS"]

# onnxruntime execution providers in order of preference; CPU is the last resort.
DEFAULT_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
DEFAULT_MAX_PIXELS = 4096 * 4096
"""The default bound on width x height of a frame: above any camera a robot carries (a
4K UHD frame is 8.3 MPixel), far below what would exhaust a small computer's memory."""
