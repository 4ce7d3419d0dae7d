"""How a robot's inputs fill a remote policy server's observation, and how its actions come back.

A mapping is a YAML file (config/remote/*.yaml), one per robot and server kind, referenced by the
policy node's `model.server_mapping`. Every field is checked when the file is loaded, and again
against the server's metadata when the node connects (configure), so a mapping that does not fit
the robot or the server is refused before the arm moves, with the names that differ::

    server:
      require: {server: vla_ros, protocol_version: 1}   # metadata values that must match exactly
    observation:
      prompt: prompt              # key of the instruction (null: the server takes none)
      images:                     # one entry per image the server wants, from the node's cameras
        - {key: observation/images/front, camera: front, size: null, resize: none, layout: hwc}
      state:                      # state arrays, from the robot's joint states (by joint name) or constants
        - {key: observation/state, joints: server}      # `server`: the metadata's state_names
        - {key: observation/joint_position, joints: robot}   # `robot`: joints.names; or a list of names
        - {key: observation/gripper_position, joints: [fr3_finger_joint1], scale: -25.0, offset: 1.0}
        - {key: observation/gripper_position, value: [0.0]}
      constants: {}               # extra keys sent as they are (strings, numbers)
    actions:
      key: actions                # the reply's array, (H, D')
      chunk_size: null            # rows used per chunk (null: the metadata's chunk_size)
      columns: null               # which of D' columns, in the robot's action order (null: all)
      scale: 1.0                  # per column (or one number): robot = server * scale + offset
      offset: 0.0
      per_second: []              # columns that are rates (rad/s, m/s): times the control period

Images: `size` [H, W] or null (as the camera gives them); `resize` none, stretch, or pad (keep the
aspect ratio and pad with black, as openpi_client.image_tools.resize_with_pad); `layout` hwc or chw;
always uint8 RGB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESIZES = ("none", "stretch", "pad")
LAYOUTS = ("hwc", "chw")


class MappingError(ValueError):
    """A mapping that is invalid, or that does not fit the robot or the server; the text says which names."""


@dataclass
class ImageSpec:
    key: str
    camera: str
    size: tuple[int, int] | None
    resize: str
    layout: str


@dataclass
class StateSpec:
    key: str
    joints: list[str] | str | None      # names, "server", "robot", or None (a constant)
    value: np.ndarray | None
    scale: float = 1.0
    offset: float = 0.0


@dataclass
class Mapping:
    source: str
    require: dict
    prompt_key: str | None
    images: list[ImageSpec]
    state: list[StateSpec]
    constants: dict
    action_key: str
    chunk_size: int | None
    columns: list[int] | None
    scale: Any
    offset: Any
    per_second: list[int]
    raw: dict = field(default_factory=dict)


def _fail(source, where, text):
    raise MappingError(f"{source}: {where}: {text}")


def parse_mapping(data: dict, source: str = "mapping") -> Mapping:
    if not isinstance(data, dict):
        _fail(source, "top level", "expected a map")
    known = {"name", "tested", "notes", "server", "observation", "actions"}
    extra = set(data) - known
    if extra:
        _fail(source, "top level", f"unknown keys {sorted(extra)} (known: {sorted(known)})")
    server = data.get("server") or {}
    require = server.get("require") or {}
    if not isinstance(require, dict):
        _fail(source, "server.require", "expected a map of metadata key -> value")
    obs = data.get("observation") or {}
    prompt = obs.get("prompt", "prompt")
    if prompt is not None and not isinstance(prompt, str):
        _fail(source, "observation.prompt", f"expected a key (string) or null, got {prompt!r}")
    images = []
    for i, im in enumerate(obs.get("images") or []):
        where = f"observation.images[{i}]"
        if not isinstance(im, dict) or not isinstance(im.get("key"), str) or not isinstance(im.get("camera"), str):
            _fail(source, where, "needs key and camera (strings)")
        size = im.get("size")
        if size is not None and (not isinstance(size, list) or len(size) != 2
                                 or not all(isinstance(s, int) and 16 <= s <= 8192 for s in size)):
            _fail(source, where + ".size", f"expected [height, width] in pixels (16..8192) or null, got {size!r}")
        resize = im.get("resize", "pad" if size else "none")
        if resize not in RESIZES or (resize == "none") != (size is None):
            _fail(source, where + ".resize", f"{resize!r}: one of {list(RESIZES)}; none exactly when size is null")
        layout = im.get("layout", "hwc")
        if layout not in LAYOUTS:
            _fail(source, where + ".layout", f"{layout!r}: one of {list(LAYOUTS)}")
        images.append(ImageSpec(im["key"], im["camera"], tuple(size) if size else None, resize, layout))
    if not images:
        _fail(source, "observation.images", "at least one image is needed")
    state = []
    for i, st in enumerate(obs.get("state") or []):
        where = f"observation.state[{i}]"
        if not isinstance(st, dict) or not isinstance(st.get("key"), str):
            _fail(source, where, "needs key (string)")
        joints, value = st.get("joints"), st.get("value")
        if (joints is None) == (value is None):
            _fail(source, where, "give exactly one of joints (names, or 'server') and value (numbers)")
        if joints is not None and joints not in ("server", "robot") and (
                not isinstance(joints, list) or not joints or not all(isinstance(j, str) for j in joints)):
            _fail(source, where + ".joints", f"expected joint names, 'server' or 'robot', got {joints!r}")
        if value is not None:
            try:
                value = np.asarray(value, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError):
                _fail(source, where + ".value", f"expected numbers, got {value!r}")
        scale, offset = st.get("scale", 1.0), st.get("offset", 0.0)
        if not all(isinstance(x, (int, float)) and np.isfinite(x) for x in (scale, offset)):
            _fail(source, where, f"scale and offset must be numbers, got {scale!r}, {offset!r}")
        state.append(StateSpec(st["key"], joints, value, float(scale), float(offset)))
    constants = obs.get("constants") or {}
    if not isinstance(constants, dict):
        _fail(source, "observation.constants", "expected a map")
    act = data.get("actions") or {}
    known_act = {"key", "chunk_size", "columns", "scale", "offset", "per_second"}
    if not isinstance(act, dict) or set(act) - known_act:
        _fail(source, "actions", f"unknown keys {sorted(set(act) - known_act) if isinstance(act, dict) else act!r} "
                                 f"(known: {sorted(known_act)})")
    key = act.get("key", "actions")
    chunk_size = act.get("chunk_size")
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        _fail(source, "actions.chunk_size", f"expected a positive integer or null, got {chunk_size!r}")
    columns = act.get("columns")
    if columns is not None and (not isinstance(columns, list) or not columns
                                or not all(isinstance(c, int) and c >= 0 for c in columns)):
        _fail(source, "actions.columns", f"expected column indices or null, got {columns!r}")
    per_second = act.get("per_second") or []
    if not isinstance(per_second, list) or not all(isinstance(c, int) and c >= 0 for c in per_second):
        _fail(source, "actions.per_second", f"expected column indices (of the robot's action), got {per_second!r}")
    return Mapping(source, dict(require), prompt, images, state, dict(constants), key, chunk_size, columns,
                   act.get("scale", 1.0), act.get("offset", 0.0), per_second, data)


def load_mapping(path: str) -> Mapping:
    import yaml
    p = Path(path)
    if not p.is_file():
        raise MappingError(f"model.server_mapping {path!r}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    return parse_mapping(data, str(path))


def _vector(x, n: int, what: str, source: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, float(arr[0]))
    if arr.size != n or not np.isfinite(arr).all():
        raise MappingError(f"{source}: actions.{what}: expected one number or {n} finite numbers, got {x!r}")
    return arr


class Binding:
    """A mapping checked against one robot and one server's metadata: builds requests, converts replies."""

    def __init__(self, m: Mapping, meta: dict, *, camera_names, action_names, action_dim: int, period: float,
                 action_space: str, joint_names=()):
        self.m = m
        src = f"{m.source} against the server's metadata"
        # Everything the server's metadata says that differs from the robot or the mapping is collected
        # and refused together, so one configure attempt names all of it.
        diffs = [f"{k}: server says {meta.get(k)!r}, the mapping requires {v!r}"
                 for k, v in m.require.items() if meta.get(k) != v]
        cams = list(camera_names)
        self.cam_index = {}
        for im in m.images:
            if im.camera not in cams:
                raise MappingError(f"{m.source}: image {im.key!r} comes from camera {im.camera!r}, which is not "
                                   f"in cameras.names {cams}")
            self.cam_index[im.key] = cams.index(im.camera)
        unused = [c for c in cams if c not in {im.camera for im in m.images}]
        if unused:
            raise MappingError(f"{m.source}: cameras.names {unused} feed no image key of the server")
        server_keys = meta.get("image_keys")
        if server_keys is not None:
            ours = [im.key for im in m.images]
            if sorted(ours) != sorted(server_keys):
                diffs.append(f"image keys: server {list(server_keys)}, mapping {ours}")
        # state: the joint names the node collects, in order
        names: list[str] = []
        self.state_parts = []
        for st in m.state:
            if st.joints is None:
                self.state_parts.append((st.key, None, st.value, 1.0, 0.0))
                continue
            joints = st.joints
            if joints == "robot":
                joints = list(joint_names)
            if joints == "server":
                joints = meta.get("state_names")
                if not isinstance(joints, list):
                    raise MappingError(f"{src}: {st.key!r} takes joints from the server's state_names, but the "
                                       "metadata has none" + ("; also " + "; ".join(diffs) if diffs else ""))
            for j in joints:
                if j not in names:
                    names.append(j)
            self.state_parts.append((st.key, list(joints), None, st.scale, st.offset))
        if meta.get("state_key") is not None and meta.get("state_names"):
            mine = [p[1] for p in self.state_parts if p[0] == meta["state_key"]]
            if not mine:
                diffs.append(f"state: the server wants {meta['state_key']!r} ({meta['state_names']}); the mapping "
                             "sends none")
            elif mine[0] != list(meta["state_names"]):
                diffs.append(f"state names: server {meta['state_names']}, mapping {mine[0]}")
        self.state_names = names
        self.index = {n: i for i, n in enumerate(names)}
        if meta.get("prompt_key") is not None and meta.get("prompt_key") != m.prompt_key:
            diffs.append(f"prompt key: server {meta['prompt_key']!r}, mapping {m.prompt_key!r}")
        # actions
        chunk = meta.get("chunk_size")
        self.chunk_size = m.chunk_size or chunk
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise MappingError(f"{m.source}: actions.chunk_size is not set and the server's metadata has no "
                               "chunk_size: say how many actions per chunk to use")
        if isinstance(chunk, int) and self.chunk_size > chunk:
            diffs.append(f"chunk size: the mapping uses {self.chunk_size} actions, the server's chunk_size is {chunk}")
        server_dim = meta.get("action_dim")
        self.columns = m.columns if m.columns is not None else (
            list(range(server_dim)) if isinstance(server_dim, int) else list(range(action_dim)))
        if len(self.columns) != action_dim:
            diffs.append(f"action dimensions: {len(self.columns)} from the server (columns {self.columns}), the "
                         f"robot's action space has {action_dim}")
        if isinstance(server_dim, int) and max(self.columns) >= server_dim:
            diffs.append(f"action columns: the mapping reads {self.columns}, the server's actions have {server_dim}")
        server_names = meta.get("action_names")
        if action_names is not None and isinstance(server_names, list) and m.columns is None:
            theirs = [server_names[c] for c in self.columns if c < len(server_names)]
            if theirs != list(action_names):
                differ = [f"{a!r} vs {b!r}" for a, b in zip(theirs, action_names) if a != b]
                diffs.append("action names (server vs robot): "
                             + (", ".join(differ) or f"{theirs} vs {list(action_names)}"))
        if meta.get("action_space") and meta["action_space"] != action_space:
            diffs.append(f"action space: server {meta['action_space']!r}, robot action_space {action_space!r}")
        if meta.get("period") and abs(float(meta["period"]) - period) > 1e-6:
            diffs.append(f"control period: server {meta['period']} s, robot control.rate {1 / period:g} Hz "
                         f"({period:g} s)")
        if diffs:
            raise MappingError(f"{src}: " + "; ".join(diffs))
        self.action_names = list(action_names) if action_names is not None else (
            [server_names[c] for c in self.columns] if isinstance(server_names, list)
            and max(self.columns) < len(server_names) else [f"a{i}" for i in range(action_dim)])
        self.action_dim = action_dim
        self.scale = _vector(m.scale, action_dim, "scale", m.source)
        self.offset = _vector(m.offset, action_dim, "offset", m.source)
        for c in m.per_second:
            if c >= action_dim:
                raise MappingError(f"{m.source}: actions.per_second names column {c}; the robot has {action_dim}")
            self.scale[c] *= period
        # The robot's actions are the server's, unchanged: committed actions can go back to the server as they
        # are (Real-Time Chunking); with any conversion they stay on the robot's side.
        self.identity = (self.columns == list(range(action_dim)) and (not isinstance(server_dim, int)
                         or server_dim == action_dim) and bool(np.all(self.scale == 1.0))
                         and bool(np.all(self.offset == 0.0)))

    # ------------------------------------------------------------------ requests and replies
    def request(self, images, instruction: str, state) -> dict:
        import cv2
        out: dict = dict(self.m.constants)
        for im in self.m.images:
            img = np.asarray(images[self.cam_index[im.key]])
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            if im.size is not None and img.shape[:2] != im.size:
                h, w = im.size
                if im.resize == "stretch":
                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                else:  # pad: keep the aspect ratio (openpi_client.image_tools.resize_with_pad)
                    s = min(h / img.shape[0], w / img.shape[1])
                    nh, nw = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
                    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
                    canvas = np.zeros((h, w, 3), np.uint8)
                    y, x = (h - nh) // 2, (w - nw) // 2
                    canvas[y:y + nh, x:x + nw] = small
                    img = canvas
            img = np.ascontiguousarray(img.transpose(2, 0, 1) if im.layout == "chw" else img, dtype=np.uint8)
            out[im.key] = img
        for key, joints, value, scale, offset in self.state_parts:
            if joints is None:
                out[key] = value
            else:
                if state is None:
                    raise ValueError("no joint state for the server's state keys")
                out[key] = np.asarray([state[self.index[j]] * scale + offset for j in joints], dtype=np.float32)
        if self.m.prompt_key is not None:
            out[self.m.prompt_key] = instruction
        return out

    def actions(self, reply) -> np.ndarray:
        """The reply's actions in robot units (chunk_size x action_dim), or ValueError saying what is wrong."""
        if not isinstance(reply, dict):
            raise ValueError(f"the server's reply is a {type(reply).__name__}, not a map")
        a = reply.get(self.m.action_key)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            raise ValueError(f"the server's reply has no numeric array {self.m.action_key!r} "
                             f"(keys: {sorted(map(str, reply))})")
        if a.ndim != 2 or a.shape[0] < self.chunk_size or a.shape[1] <= max(self.columns):
            raise ValueError(f"the server returned actions of shape {list(a.shape)}; expected at least "
                             f"[{self.chunk_size}, {max(self.columns) + 1}]")
        out = a[: self.chunk_size][:, self.columns].astype(np.float64) * self.scale + self.offset
        if not np.isfinite(out).all():
            raise ValueError("the server returned non-finite actions (NaN/inf); refused")
        return out
