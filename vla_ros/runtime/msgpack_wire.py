"""msgpack with numpy arrays, in the format openpi's websocket policy protocol uses (never pickle).

The format is openpi-client's `msgpack_numpy` (packages/openpi-client/src/openpi_client/msgpack_numpy.py,
itself after lebedov/msgpack-numpy without its pickle fallback): an array travels as the map
``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [H, W, C]}`` and a numpy
scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<f4"}``. This is our own
implementation of it, stricter on the way in, because a server or a robot reads bytes that came
over a network:

  * only boolean, integer and floating point dtypes (no object, void or complex arrays: an object
    array is what would need pickle);
  * the data length must match shape x itemsize exactly, and a shape has at most 8 non-negative
    dimensions;
  * the whole message is bounded (`max_bytes`) before it is parsed.

Decoding errors raise `WireError` (a ValueError) with the reason.
"""
from __future__ import annotations

import math

import msgpack
import numpy as np

ALLOWED_KINDS = frozenset("biuf")   # bool, signed and unsigned integers, floats
MAX_DIMS = 8
DEFAULT_MAX_BYTES = 256 << 20


class WireError(ValueError):
    """A message that is not valid msgpack-numpy; the message says why."""


def _default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send scalars of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _dtype(spec) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or len(spec) > 8:
        raise WireError(f"bad dtype {spec!r}")
    try:
        dt = np.dtype(spec)
    except TypeError as exc:
        raise WireError(f"bad dtype {spec!r}") from exc
    if dt.kind not in ALLOWED_KINDS:
        raise WireError(f"dtype {spec!r} is not allowed (only bool, int, uint, float)")
    return dt


def _hook(obj: dict):
    if b"__ndarray__" in obj:
        dt = _dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise WireError(f"bad array shape {shape!r}")
        if not isinstance(data, bytes):
            raise WireError("array data is not bytes")
        if math.prod(shape) * dt.itemsize != len(data):
            raise WireError(f"array data has {len(data)} bytes, not the {math.prod(shape) * dt.itemsize} "
                            f"of a {list(shape)} {dt} array")
        return np.frombuffer(data, dtype=dt).reshape(shape)  # read-only view of the message
    if b"__npgeneric__" in obj:
        dt = _dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise WireError(f"bad {dt} scalar") from exc
    return obj


def packb(obj) -> bytes:
    """Encode dicts, lists, strings, numbers and numpy arrays/scalars."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpackb(data, max_bytes: int = DEFAULT_MAX_BYTES):
    """Decode one message; raise WireError for anything that is not valid msgpack-numpy."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary message, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=False)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds (ExtraData, FormatError, ValueError, ...)
        raise WireError(f"not a msgpack message: {type(exc).__name__}: {exc}") from exc
