"""Policy checkpoints: a directory of safetensors weights and JSON, never pickle.

Layout written by :func:`save_policy` (``policy.save(path)``)::

    path/
      model.safetensors     all weights (safetensors: a JSON header + raw tensor bytes)
      config.json           the VLAConfig, verbatim
      normalization.json    per-dimension statistics (normalization.py)
      pretrained/<role>/    architecture + tokenizer of pretrained towers (no weights),
                            so that the checkpoint loads without the original directories

:func:`load_policy` rebuilds the policy from ``config.json`` and refuses, with a
:class:`CheckpointError` that says what is wrong, anything it cannot load exactly: a
missing file, an unknown config key, a tensor missing, unexpected or of the wrong shape,
and any pickle. ``torch.load`` / ``pickle.load`` execute arbitrary code stored in the file
(a ``.pt`` from the internet is a program), so pickle files (magic byte ``\\x80``) and
``torch.save`` zip archives (``PK``) are detected by their first bytes and never opened.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORMALIZATION_FILE = "normalization.json"
PRETRAINED_DIR = "pretrained"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded exactly as saved."""


def sniff_pickle(path: Path) -> str | None:
    """'pickle' or 'torch zip archive' when the file starts like one, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head[:1] == b"\x80":  # PROTO opcode: every pickle of protocol >= 2 starts with it
        return "pickle"
    if head[:2] == b"PK":  # torch.save's default format is a zip archive holding a pickle
        return "torch zip archive (pickle inside)"
    return None


def _refuse_pickle(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load {str(path)!r}: it is a {kind} file. Unpickling can execute arbitrary code, so "
        f"vla_ros only loads safetensors checkpoints; convert it where you trust it "
        f"(safetensors.torch.save_file(torch.load(...), '{MODEL_FILE}'))"
    )


def _check_safetensors_header(path: Path) -> None:
    kind = sniff_pickle(path)
    if kind:
        raise _refuse_pickle(path, kind)
    with open(path, "rb") as f:
        raw = f.read(9)
    size = os.path.getsize(path)
    if len(raw) < 9:
        raise CheckpointError(f"{str(path)!r} is not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if raw[8:9] != b"{" or 8 + n > size:
        raise CheckpointError(f"{str(path)!r} is not a safetensors file (bad header)")


# ------------------------------------------------------------------------------ save
def save_policy(policy, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    state = policy.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_quantized]
    if getattr(policy, "quantization", None):
        bad = bad or [f"quantization={policy.quantization}"]
    if bad:
        raise ValueError(
            f"cannot save a quantized policy ({bad[:3]}...): save the float policy and quantize after loading"
        )
    path.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage (views, tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tmp = path / (MODEL_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "vla_ros_checkpoint": str(FORMAT_VERSION)})
    os.replace(tmp, path / MODEL_FILE)
    cfg = policy.config
    policy.config.save(path / CONFIG_FILE)
    stats = policy.normalization_stats
    norm = {
        "format_version": FORMAT_VERSION,
        "mode": cfg.normalization_mode,
        "action_names": cfg.action_names,
        "state_names": cfg.state_names,
        "unnormalized_names": cfg.unnormalized_names,
        "stats": {k: (v.to_dict() if v is not None else None) for k, v in stats.items()},
    }
    (path / NORMALIZATION_FILE).write_text(json.dumps(norm, indent=2) + "\n", encoding="utf-8")
    for role, module in policy.pretrained_modules().items():
        d = path / PRETRAINED_DIR / role
        d.mkdir(parents=True, exist_ok=True)
        module.save_config(d)
    return path


# ------------------------------------------------------------------------------ load
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r} is missing file {path.name!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {e}") from None


def read_normalization(path: Path, config) -> dict:
    """Parse normalization.json and check it matches the config (names, mode)."""
    from .normalization import FeatureStats

    data = _read_json(path)
    if not isinstance(data, dict) or "stats" not in data:
        raise CheckpointError(f"{str(path)!r} has no 'stats' entry")
    for key, expected in (("action_names", config.action_names), ("state_names", config.state_names)):
        if key in data and data[key] != expected:
            raise CheckpointError(f"{str(path)!r}: {key} {data[key]} do not match config.json's {expected}")
    stats = {}
    for feature, value in data["stats"].items():
        if feature not in ("action", "state"):
            raise CheckpointError(f"{str(path)!r}: unknown feature {feature!r} in stats")
        if value is None:
            continue
        try:
            stats[feature] = FeatureStats.from_dict(value)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{str(path)!r}: bad {feature} statistics: {e}") from None
        dim = config.action_dim if feature == "action" else config.state_dim
        if stats[feature].dim != dim:
            raise CheckpointError(
                f"{str(path)!r}: {feature} statistics have {stats[feature].dim} dimensions, config says {dim}"
            )
    return stats


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a policy saved by ``policy.save(path)``; returns it in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .config import VLAConfig
    from .policy import VLAPolicy

    path = Path(path)
    if path.is_file():
        kind = sniff_pickle(path)
        if kind or path.suffix in PICKLE_SUFFIXES:
            raise _refuse_pickle(path, kind or f"{path.suffix} (pickle-based format)")
        raise CheckpointError(f"{str(path)!r} is a file; a checkpoint is a directory holding {MODEL_FILE}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.is_file() and (p.suffix in PICKLE_SUFFIXES or sniff_pickle(p)))
        if pickles:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is missing file {MODEL_FILE!r} and holds pickle file(s) {pickles}: "
                "refusing to unpickle (it can execute arbitrary code); convert them to safetensors"
            )
        raise CheckpointError(f"checkpoint {str(path)!r} is missing file {MODEL_FILE!r}")
    _check_safetensors_header(model_file)

    try:
        config = VLAConfig.from_dict(_read_json(path / CONFIG_FILE))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r}: {e}") from None
    stats = read_normalization(path / NORMALIZATION_FILE, config)

    dirs = {}
    for role in ("vision", "language"):
        d = path / PRETRAINED_DIR / role
        if d.is_dir():
            dirs[role] = str(d)
    try:
        policy = VLAPolicy(config, load_pretrained=False, pretrained_dirs=dirs)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild the policy of {str(path)!r}: {e}") from None

    try:
        state = load_file(str(model_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(model_file)!r} is not a readable safetensors file: {e}") from None
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{str(model_file)!r} is missing tensor(s) {missing[:10]} ({len(missing)} in all)")
    if unexpected:
        raise CheckpointError(f"{str(model_file)!r} has unexpected tensor(s) {unexpected[:10]} ({len(unexpected)} in all)")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"shape mismatch for tensor {name!r}: checkpoint has {tuple(tensor.shape)}, "
                f"the model built from config.json expects {tuple(expected[name].shape)}"
            )
    policy.load_state_dict(state, strict=True)
    policy.set_normalization_stats(stats)
    return policy.to(device).eval()
