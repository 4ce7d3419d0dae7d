"""Image conversion between ``sensor_msgs/Image`` fields and numpy, without cv_bridge.

cv_bridge is a compiled ROS package that is often missing or ABI-incompatible with the
numpy in a policy's virtualenv, and all we need is "bytes -> RGB uint8". The functions
take the message *fields* (not the message) so this module has no ROS dependency.

Layout (REP 104 / sensor_msgs/Image): ``height`` rows of ``step`` bytes each; the first
``width * bytes_per_pixel`` bytes of a row are pixels, the rest is padding. ``data``
must hold exactly ``step * height`` bytes.

Every decoder returns an ``(H, W, 3)`` RGB ``uint8`` array. For ``rgb8`` the result is
a zero-copy view of ``data`` (``np.frombuffer``), read-only when ``data`` is ``bytes``;
pass ``copy=True`` for a writeable, C-contiguous array. Other encodings need a channel
reorder or conversion and always return a new contiguous array.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import cv2  # opencv-python-headless: JPEG/PNG codecs and grey conversion
import numpy as np

__all__ = [
    "ImageDecodeError",
    "ImageLimits",
    "compressed_size",
    "SUPPORTED_ENCODINGS",
    "decode_compressed",
    "decode_raw",
    "encode_compressed",
    "encode_raw",
]


class ImageDecodeError(ValueError):
    """An image message cannot be decoded; the message names the problem."""


@dataclass(frozen=True)
class ImageLimits:
    """What a camera input may be, checked from the message's header fields before decoding, so a
    decompression bomb (a 400 KB PNG of 20000 x 20000 pixels) is refused without allocating it."""

    max_width: int = 4096
    max_height: int = 4096
    min_side: int = 16                  # 1 x 1 or 1 x 5000 frames are not camera images
    max_bytes: int = 64 << 20           # compressed payload
    colour_only: bool = True            # refuse 16-bit (depth) encodings as colour input

    def check(self, width: int, height: int, encoding: str = "") -> None:
        if encoding and encoding not in _ENCODINGS:
            raise ImageDecodeError(
                f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
        if width > self.max_width or height > self.max_height:
            raise ImageDecodeError(f"{width}x{height} image exceeds the limit of {self.max_width}x{self.max_height} "
                                   "(cameras.max_width/max_height); refused before decoding")
        if min(width, height) < self.min_side:
            raise ImageDecodeError(f"{width}x{height} image is smaller than {self.min_side} pixels on a side "
                                   "(cameras.min_side)")
        if self.colour_only and encoding in _SIXTEEN_BIT:
            raise ImageDecodeError(f"{encoding} is a 16-bit (depth) encoding, not a colour camera image")


def compressed_size(data) -> tuple[int, int]:
    """(width, height) that a JPEG or PNG declares in its header, without decoding it.

    Pillow reads only the header here (Image.open is lazy), about 0.1 ms.
    """
    from PIL import Image, UnidentifiedImageError

    buf = _as_bytes_array(data, "compressed image data")
    if buf.size == 0:
        raise ImageDecodeError("zero-size compressed image")
    try:
        with Image.open(io.BytesIO(buf)) as im:
            return im.size
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above any camera limit
        raise ImageDecodeError(f"compressed image exceeds the limit: {exc}") from None
    except UnidentifiedImageError:  # (its message names a Python object: not for a log line)
        head = buf[:8].tobytes()
        kind = "JPEG" if head.startswith(_JPEG_MAGIC) else "PNG" if head.startswith(_PNG_MAGIC[:4]) else None
        if kind:
            raise ImageDecodeError(f"truncated or unreadable {kind} header ({buf.size} bytes)") from None
        raise ImageDecodeError(f"compressed image is neither JPEG nor PNG (first bytes "
                               f"{head[:4].hex()})") from None
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"unreadable compressed image header ({type(exc).__name__})") from None


# encoding -> (channels, bytes per channel)
_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "8UC1": (1, 1),
    "mono16": (1, 2),
    "16UC1": (1, 2),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
_SIXTEEN_BIT = {e for e, (_, depth) in _ENCODINGS.items() if depth == 2}

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _as_bytes_array(data, what: str) -> np.ndarray:
    """uint8 view of ``data`` without copying (bytes, bytearray, memoryview,
    array.array('B') as rclpy gives for uint8[] fields); lists are copied."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        pass
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageDecodeError(f"{what} is not a list of bytes ({exc})") from None
    raise ImageDecodeError(f"{what} must be bytes-like, got {type(data).__name__}")


def _pixel_rows(height: int, width: int, encoding: str, step: int, data, is_bigendian: int) -> np.ndarray:
    """Validate the fields and return an (H, W, C) view of the pixel bytes."""
    if encoding not in _ENCODINGS:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, depth = _ENCODINGS[encoding]
    try:
        height, width, step = int(height), int(width), int(step)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"image height/width/step must be integers ({exc})") from None
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"zero-size image: {width}x{height} ({encoding})")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image of width {width} needs step >= {row_bytes} bytes per row, got step {step}"
        )
    buf = _as_bytes_array(data, "image data")
    expected = step * height
    if buf.size != expected:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height} with step {step} needs {expected} bytes, got {buf.size}"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]  # drop row padding, still a view
    if depth == 1:
        return rows.reshape(height, width, channels)
    # 16-bit: reinterpret the bytes with the message's byte order (still a view).
    dtype = np.dtype(">u2" if is_bigendian else "<u2")
    return rows.view(dtype).reshape(height, width, channels)


def decode_raw(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data,
    is_bigendian: int = 0,
    copy: bool = False,
) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into an ``(H, W, 3)`` RGB uint8 array.

    Supported encodings: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped),
    ``mono8``/``8UC1`` and ``mono16``/``16UC1`` (grey replicated to 3 channels; 16-bit
    values are reduced to 8 bits by keeping the high byte, ``v >> 8``, so the full
    16-bit range maps onto 0..255).

    Raises:
        ImageDecodeError: unknown encoding, zero size, ``step`` too small, or ``data``
            not exactly ``step * height`` bytes.
    """
    px = _pixel_rows(height, width, encoding, step, data, is_bigendian)
    if encoding == "rgb8":
        return np.ascontiguousarray(px).copy() if copy else px
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(px[:, :, 2::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(px[:, :, :3])
    grey = px[:, :, 0]
    if grey.dtype != np.uint8:
        grey = (grey >> 8).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def encode_raw(
    rgb: np.ndarray,
    encoding: str = "rgb8",
    row_padding: int = 0,
    is_bigendian: int = 0,
) -> tuple[str, int, bytes]:
    """Encode an ``(H, W, 3)`` RGB uint8 image as ``sensor_msgs/Image`` fields.

    The inverse of :func:`decode_raw`, for tests and the simulator. Grey encodings use
    ITU-R BT.601 luma (OpenCV ``RGB2GRAY``); 16-bit grey stores ``v * 257`` so that
    ``decode_raw`` gives back ``v``. Alpha is 255.

    Args:
        row_padding: extra bytes appended to every row (``step = row bytes + padding``),
            to exercise decoders' handling of ``step``.

    Returns:
        ``(encoding, step, data)``.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"encode_raw expects an (H, W, 3) uint8 RGB array, got {img.shape} {img.dtype}")
    h, w, _ = img.shape
    if encoding == "rgb8":
        px = img
    elif encoding == "bgr8":
        px = img[:, :, ::-1]
    elif encoding in ("rgba8", "bgra8"):
        color = img if encoding == "rgba8" else img[:, :, ::-1]
        px = np.concatenate([color, np.full((h, w, 1), 255, np.uint8)], axis=2)
    else:
        grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        if _ENCODINGS[encoding][1] == 2:
            px = (grey.astype(np.uint16) * 257).astype(">u2" if is_bigendian else "<u2")[:, :, None]
        else:
            px = grey[:, :, None]
    rows = np.ascontiguousarray(px).view(np.uint8).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, int(row_padding)), np.uint8)], axis=1)
    return encoding, int(rows.shape[1]), rows.tobytes()


def decode_compressed(format: str, data) -> np.ndarray:  # noqa: A002 - ROS field name
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) into RGB uint8.

    ``format`` is informational (image_transport writes e.g. ``"jpeg"`` or
    ``"bgr8; jpeg compressed bgr8"``); the codec is recognised from the data's magic
    bytes. ``compressedDepth`` (a custom header before the PNG) is not supported.

    Raises:
        ImageDecodeError: empty data, not JPEG/PNG, truncated JPEG (no end-of-image
            marker), or data the codec rejects.
    """
    fmt = str(format or "")
    if "compresseddepth" in fmt.lower():
        raise ImageDecodeError(f"compressedDepth images are not supported (format {fmt!r})")
    buf = _as_bytes_array(data, "compressed image data")
    if buf.size == 0:
        raise ImageDecodeError(f"zero-size compressed image (format {fmt!r})")
    head = buf[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        kind = "JPEG"
        # A JPEG ends with the EOI marker; 0xFF 0xD9 cannot occur inside entropy-coded
        # data (0xFF is byte-stuffed there), so its absence means truncation. Some
        # decoders would silently fill the missing rows with grey instead of failing.
        tail = buf[-64:].tobytes().rstrip(b"\x00")
        if not tail.endswith(_JPEG_EOI):
            raise ImageDecodeError(
                f"truncated JPEG: {buf.size} bytes without an end-of-image marker (format {fmt!r})"
            )
    elif head.startswith(_PNG_MAGIC):
        kind = "PNG"
    else:
        raise ImageDecodeError(
            f"compressed image is neither JPEG nor PNG (format {fmt!r}, first bytes {head[:4].hex()})"
        )
    with _codec_messages() as messages:
        if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.11 decodes straight to RGB
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)
        else:  # pragma: no cover - older OpenCV
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if img is not None:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        raise ImageDecodeError(f"corrupt or truncated {kind} ({buf.size} bytes, format {fmt!r})")
    corrupt = [m for m in messages if m.startswith(("Corrupt JPEG data", "Premature end of JPEG file"))]
    if corrupt:
        # libjpeg decoded it anyway, with grey or smeared blocks where the data was damaged:
        # not an observation to act on.
        raise ImageDecodeError(f"{corrupt[0].rstrip('.')} ({buf.size} bytes, format {fmt!r}); frame skipped")
    return img


_CAPTURE_LOCK = threading.Lock()
_SINK: int | None = None
_CODEC_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "libpng warning")


@contextmanager
def _codec_messages():
    """Collect what the codecs print to file descriptor 2 while decoding, as a list of lines.

    OpenCV installs libjpeg's default message handler, which prints warnings such as
    "Corrupt JPEG data: premature end of data segment" straight to stderr, on every frame, and
    OpenCV has no API to intercept or silence them (Pillow silences them and cannot report them
    either). So for the duration of the call fd 2 points at an anonymous in-memory file (never a
    pipe: a writer can never block on it), and afterwards anything that is not a codec warning (a
    log line another thread wrote meanwhile) is written back to the real stderr. About 20 us.
    """
    global _SINK
    lines: list[str] = []
    with _CAPTURE_LOCK:
        if _SINK is None:  # one in-memory file for the process's life, emptied after each use
            try:
                _SINK = os.memfd_create("vla_ros_codec_messages", os.MFD_CLOEXEC)
            except (AttributeError, OSError):  # pragma: no cover - not Linux: leave stderr alone
                yield lines
                return
        sink = _SINK
        saved = os.dup(2)
        try:
            os.dup2(sink, 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
            size = os.fstat(sink).st_size
            if size:
                text = os.pread(sink, min(size, 1 << 20), 0).decode("utf-8", "replace")
                other = []
                for line in text.splitlines(keepends=True):
                    if line.startswith(_CODEC_WARNINGS):
                        lines.append(line.strip())
                    else:
                        other.append(line)
                if other:
                    os.write(2, "".join(other).encode())
                os.ftruncate(sink, 0)
                os.lseek(sink, 0, os.SEEK_SET)  # (fd 2 shared the offset while it pointed here)
        finally:
            os.close(saved)


def encode_compressed(rgb: np.ndarray, format: str = "jpeg", quality: int = 90) -> bytes:  # noqa: A002
    """Compress an RGB uint8 image to JPEG or PNG bytes (for tests and the simulator)."""
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"encode_compressed expects an (H, W, 3) uint8 RGB array, got {img.shape} {img.dtype}")
    fmt = format.lower()
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    if fmt in ("jpeg", "jpg"):
        ok, out = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, out = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"unsupported compressed format {format!r}; use 'jpeg' or 'png'")
    if not ok:  # pragma: no cover
        raise ValueError(f"OpenCV failed to encode {format}")
    return out.tobytes()
