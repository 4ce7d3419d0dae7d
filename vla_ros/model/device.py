"""Which torch device a policy runs or trains on: the one place that decides."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU. ``"cpu"``, ``"cuda"``, ``"cuda:N"``:
    that device; a CUDA device on a machine without CUDA is a ValueError, not a silent
    fall back to the CPU (a run asked to use a GPU that quietly takes hours on the CPU is
    worse than one that stops at once; ``"auto"`` is how to ask for "GPU if there is one")."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {str(device)!r} is not a torch device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available (use 'cpu' or 'auto')")
    return dev
