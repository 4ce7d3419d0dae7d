"""Message <-> numpy conversion for the nodes: images, joint states, trajectories."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration

from vla_ros.imaging.decode import ImageDecodeError, ImageLimits, compressed_size, decode_compressed, decode_raw

try:  # The real ROS 2 cv_bridge when it imports (a ROS install); numpy decoding otherwise.
    from cv_bridge import CvBridge as _CvBridge

    _BRIDGE = _CvBridge()
except Exception:  # noqa: BLE001 - any import/ABI failure means "not usable here"
    _BRIDGE = None

_BRIDGE_ENCODINGS = {"rgb8", "bgr8", "rgba8", "bgra8", "mono8"}


def image_to_rgb(msg, limits: ImageLimits | None = None) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB; raises ImageDecodeError with the reason."""
    if limits is not None:
        limits.check(msg.width, msg.height, msg.encoding)
    if _BRIDGE is not None and msg.encoding in _BRIDGE_ENCODINGS:
        expected = msg.height * msg.step
        if len(msg.data) != expected or msg.height == 0 or msg.width == 0:
            raise ImageDecodeError(f"{msg.width}x{msg.height} {msg.encoding} image with step {msg.step} needs "
                                   f"{expected} bytes, got {len(msg.data)}")
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as exc:  # noqa: BLE001 - cv_bridge raises its own error types
            raise ImageDecodeError(f"cv_bridge could not convert a {msg.encoding} image: {exc}") from exc
    return decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data, msg.is_bigendian)


def compressed_to_rgb(msg, limits: ImageLimits | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG/PNG) -> H x W x 3 uint8 RGB; the declared size is checked first."""
    if limits is not None:
        if len(msg.data) > limits.max_bytes:
            raise ImageDecodeError(f"compressed image of {len(msg.data)} bytes exceeds {limits.max_bytes}")
        limits.check(*compressed_size(msg.data))
    return decode_compressed(msg.format, msg.data)


def seconds_to_duration(seconds: float) -> Duration:
    sec = int(np.floor(seconds))
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


class JointStateMatcher:
    """Pick the configured joints out of sensor_msgs/JointState by name, not by order."""

    def __init__(self, joint_names):
        self.joint_names = list(joint_names)
        self._warned_unknown: set[str] = set()
        self.duplicates: list[str] = []

    def match(self, msg) -> tuple[np.ndarray | None, list[str], list[str]]:
        """Return (positions in configured order or None, missing names, newly seen unknown names).

        None without missing names: the lengths differ or a configured joint is named twice
        (`duplicates` says which)."""
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [n for n in self.joint_names if n not in index]
        known = set(self.joint_names)
        unknown = [n for n in msg.name if n not in known and n not in self._warned_unknown]
        if len(self._warned_unknown) < 10000:  # names seen are remembered to log them once, not without bound
            self._warned_unknown.update(unknown)
        self.duplicates = []
        if len(index) != len(msg.name):
            seen = set()
            self.duplicates = sorted({n for n in msg.name if n in known and (n in seen or seen.add(n))})
        if missing or len(msg.position) != len(msg.name) or self.duplicates:
            return None, missing, unknown
        return np.array([msg.position[index[n]] for n in self.joint_names], dtype=np.float64), [], unknown
