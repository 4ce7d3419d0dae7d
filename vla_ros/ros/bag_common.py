"""What the recorder, player and sim robot nodes share: message classes by type name, QoS,
signal handling and spinning."""
from __future__ import annotations

import importlib
import signal
import threading

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

QUEUE_DEPTH = 100


def message_class(msgtype: str):
    """The Python message class of "pkg/msg/Type", a service's "pkg/srv/Type_Event" (or _Request,
    _Response), or an action's "pkg/action/Type_FeedbackMessage" (or _Goal, _SendGoal_Request, ...)."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"invalid message type {msgtype!r}")
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError as exc:
        raise ValueError(f"message type {msgtype} is not installed: {exc}") from None
    cls = getattr(module, name, None)
    if cls is None and kind == "action" and "_" in name:
        # rosidl puts an action's own messages on its class (Goal, Result, Feedback) and the
        # derived ones on .Impl (FeedbackMessage, GoalStatusMessage, SendGoalService, ...).
        base, _, rest = name.partition("_")
        action = getattr(module, base, None)
        cls = getattr(action, rest, None) or getattr(getattr(action, "Impl", None), rest, None)
    if cls is None or not hasattr(cls, "_TYPE_SUPPORT") and not hasattr(cls, "__import_type_support__"):
        raise ValueError(f"message type {msgtype} is not installed: {pkg}.{kind} has no {name}")
    return cls


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


class StopSignal:
    """SIGINT/SIGTERM set an event instead of tearing the context down under us."""

    def __init__(self):
        self.event = threading.Event()
        self.signum = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        self.event.set()

    def __bool__(self):
        return self.event.is_set()


def spin_until_stopped(executor, stop: threading.Event) -> None:
    """Spin `executor` (in a thread) until `stop` is set; errors after the stop are the
    context being shut down under it at exit and are ignored."""
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - context shut down under us at exit
            if not stop.is_set():
                raise
