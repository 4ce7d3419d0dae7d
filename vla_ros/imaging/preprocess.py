"""Camera image preprocessing with OpenCV: any camera frame -> float (3, S, S) RGB in [0, 1].

Steps, in the order they are applied:
  1. channels: grayscale H x W (or H x W x 1) is replicated to 3 channels; a 4th (alpha)
     channel is dropped; BGR frames (OpenCV, many ROS drivers' "bgr8") are swapped to RGB.
  2. resize keeping the aspect ratio so that the short side equals S (INTER_AREA when
     shrinking, which avoids aliasing; INTER_LINEAR when enlarging), then
  3. center-crop to S x S: the policy sees the middle of the frame, undistorted, as in
     the usual ImageNet / SigLIP evaluation transform.
  4. dtype: uint8 / 255, uint16 / 65535, float kept (clipped to [0, 1]).

No torch here: the ROS node and data tools can use it on their own.
"""

from __future__ import annotations

import cv2
import numpy as np

COLOR_ORDERS = ("rgb", "bgr")


def _to_rgb(image: np.ndarray, color_order: str) -> np.ndarray:
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W, H x W x 1, H x W x 3 or H x W x 4 image, got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if color_order == "bgr":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def resize_center_crop(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize so the image covers ``size`` (h, w) keeping its aspect ratio, then center-crop."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)  # cv2 takes (width, height)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return image[top : top + out_h, left : left + out_w]


def to_unit_float(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) * (1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * (1.0 / 65535.0)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def preprocess_image(image: np.ndarray, size: int | tuple[int, int], color_order: str = "rgb") -> np.ndarray:
    """One frame (H x W [x C]) -> float32 (3, h, w) RGB in [0, 1]."""
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and image.dtype != np.float32:
        image = image.astype(np.float32)  # OpenCV resizes float32, not float64
    rgb = _to_rgb(image, color_order)
    rgb = resize_center_crop(rgb, size)
    return np.ascontiguousarray(to_unit_float(rgb).transpose(2, 0, 1))  # (3, h, w)


def preprocess_images(
    images: list[np.ndarray], size: int | tuple[int, int], color_order: str | list[str] = "rgb"
) -> np.ndarray:
    """V camera frames -> float32 (V, 3, h, w); ``color_order`` may differ per camera."""
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (1, 3, 4):
        images = [images]  # a single H x W x C frame
    images = list(images)
    if not images:
        raise ValueError("no camera images given")
    orders = [color_order] * len(images) if isinstance(color_order, str) else list(color_order)
    if len(orders) != len(images):
        raise ValueError(f"{len(orders)} color orders for {len(images)} images")
    return np.stack([preprocess_image(im, size, o) for im, o in zip(images, orders)])
