"""The torch device a training or evaluation run asks for."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("vla_ros.model.device")


def select_device(device: str) -> torch.device:
    """"cpu", "cuda[:N]" (CPU with a warning when CUDA is unavailable) or "auto"."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is not available: running on the CPU", device)
        return torch.device("cpu")
    return dev
