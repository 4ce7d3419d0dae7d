"""The messages an episode needs, read from one bag: checked, deserialized, time-stamped.

Times are nanoseconds from ``header.stamp``; messages without a header, or with a zero
stamp, use the bag's receive timestamp. Camera images are decoded (rgb8, bgr8, mono8, ...
or JPEG/PNG CompressedImage), resized and center-cropped to ``image_size`` and kept as
uint8 RGB arrays.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vla_ros.data.actions import ACTION_SOURCES
from vla_ros.data.bags import BagError, BagReader, typestore_for
from vla_ros.data.config import NS, DatasetConfig
from vla_ros.data.errors import DatasetError
from vla_ros.imaging.decode import ImageDecodeError, decode_compressed, decode_raw
from vla_ros.imaging.preprocess import resize_center_crop

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STATE_TYPES = ("sensor_msgs/msg/JointState",)
STRING_TYPES = ("std_msgs/msg/String",)
BOOL_TYPES = ("std_msgs/msg/Bool",)


class StampedMessage(NamedTuple):
    stamp: int          # ns: header stamp, else receive time
    has_header: bool    # whether ``stamp`` is a header stamp
    receive: int        # ns: the bag's receive timestamp
    msg: Any            # the deserialized message; for cameras the decoded (S, S, 3) uint8 image


def required_topics(config: DatasetConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """topic -> (accepted types, what it is for)."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for cam in config.cameras:
        out[cam.topic] = (IMAGE_TYPES, f"camera {cam.name!r}")
    out[config.state_topic] = (STATE_TYPES, "state")
    source = ACTION_SOURCES[config.action.kind]
    for topic, types in source.topics(config.action).items():
        out[topic] = (types, f"{config.action.kind} action")
    if config.instruction_topic and not config.default_instruction:
        out[config.instruction_topic] = (STRING_TYPES, "instruction")
    if config.success_topic and config.only_successful:
        out[config.success_topic] = (BOOL_TYPES, "task success")
    return out


def optional_topics(config: DatasetConfig, required: dict) -> dict[str, tuple[str, ...]]:
    """Instruction and success topics read when present: topic -> accepted types."""
    optional = {}
    if config.instruction_topic and config.instruction_topic not in required:
        optional[config.instruction_topic] = STRING_TYPES
    if config.success_topic and config.success_topic not in required:
        optional[config.success_topic] = BOOL_TYPES
    return optional


def read_episode_messages(bag: Path, config: DatasetConfig,
                          keep_size: bool = False) -> dict[str, list[StampedMessage]]:
    """topic -> its messages sorted by (stamp, receive time), for every topic the config
    needs and the optional ones the bag has. Images are resized and center-cropped to
    ``config.image_size``, or with ``keep_size`` kept at the camera's own size (LeRobot export).
    Raises DatasetError."""
    required = required_topics(config)
    optional = optional_topics(config, required)
    try:
        reader = BagReader(bag)
    except BagError as e:
        raise DatasetError(f"bag {bag}: unreadable: {e}") from None
    with reader:
        types_of = _check_topic_types(bag, reader.topics, required, optional)
        msgs: dict[str, list[StampedMessage]] = {t: [] for t in types_of}
        camera_topics = {c.topic for c in config.cameras}
        size = None if keep_size else config.image_size
        try:
            for m in reader.messages(list(types_of)):
                obj = _deserialize(m.data, m.msgtype, bag, m.topic)
                stamp, has_header = _stamp(obj, m.timestamp)
                if m.topic in camera_topics:
                    obj = _decode_image(obj, m.msgtype, size, f"bag {bag}: image on {m.topic}")
                msgs[m.topic].append(StampedMessage(stamp, has_header, m.timestamp, obj))
        except BagError as e:
            raise DatasetError(f"bag {bag}: unreadable: {e}") from None
    for topic in msgs:
        msgs[topic].sort(key=lambda x: (x.stamp, x.receive))
    return msgs


def _check_topic_types(bag: Path, topics: dict, required: dict, optional: dict) -> dict[str, str]:
    """topic -> message type of every required and present optional topic; raises
    DatasetError for a missing required topic or a topic of the wrong type."""
    for topic, (types, what) in required.items():
        info = topics.get(topic)
        if info is None:
            raise DatasetError(f"bag {bag}: missing topic {topic} ({what}); the bag has {sorted(topics)}")
        if info.msgtype not in types:
            raise DatasetError(f"bag {bag}: topic {topic} ({what}) has type {info.msgtype}, expected "
                               f"{' or '.join(types)}")
    types_of = {t: topics[t].msgtype for t in list(required) + list(optional) if t in topics}
    for t, types in optional.items():
        if t in types_of and types_of[t] not in types:
            raise DatasetError(f"bag {bag}: topic {t} has type {types_of[t]}, expected {' or '.join(types)}")
    return types_of


@lru_cache(maxsize=1)
def _typestore():
    return typestore_for()


def _deserialize(data: bytes, msgtype: str, bag: Path, topic: str):
    try:
        return _typestore().deserialize_cdr(data, msgtype)
    except Exception as e:  # rosbags raises assorted errors for malformed CDR
        raise DatasetError(f"bag {bag}: cannot deserialize a {msgtype} message on {topic}: "
                           f"{type(e).__name__}: {e}") from None


def _stamp(msg, receive_ns: int) -> tuple[int, bool]:
    """(header stamp in ns, True) or (receive time, False) for headerless / zero stamps."""
    header = getattr(msg, "header", None)
    if header is not None:
        t = int(header.stamp.sec) * NS + int(header.stamp.nanosec)
        if t > 0:
            return t, True
    return int(receive_ns), False


def _decode_image(msg, msgtype: str, size: int | None, where: str) -> np.ndarray:
    try:
        if msgtype.endswith("CompressedImage"):
            rgb = decode_compressed(msg.format, msg.data)
        else:
            rgb = decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data, msg.is_bigendian)
    except ImageDecodeError as e:
        raise DatasetError(f"{where}: {e}") from None
    return np.ascontiguousarray(rgb if size is None else resize_center_crop(rgb, size), dtype=np.uint8)
