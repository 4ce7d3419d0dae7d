"""QoS profiles by name, and a publisher's offered QoS as rosbag2 records it (recorder, player)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

QUEUE_DEPTH = 100


def qos(reliability: str, durability: str, depth: int = QUEUE_DEPTH) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if durability == "transient_local"
                      else DurabilityPolicy.VOLATILE)


def offered_qos(profile):
    """A publisher's QoS as the graph reports it, as rosbags' Qos (what rosbag2 records as offered).

    Durations are sec/nsec; the "infinite" duration is written as rosbag2 writes it
    (2147483647 s, 4294967295 ns).
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def enum(cls, value):
        try:
            return cls(int(value))
        except ValueError:
            return cls.UNKNOWN

    def duration(d):
        ns = d.nanoseconds
        if ns >= 2**63 - 1 or ns < 0:
            return QosTime(2147483647, 4294967295)
        sec, nsec = divmod(ns, 10**9)
        return QosTime(sec, nsec) if sec < 2147483647 else QosTime(2147483647, 4294967295)

    return Qos(enum(QosHistory, profile.history), int(profile.depth), enum(QosReliability, profile.reliability),
               enum(QosDurability, profile.durability), duration(profile.deadline), duration(profile.lifespan),
               enum(QosLiveliness, profile.liveliness), duration(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))
