"""Message classes by their type name ("sensor_msgs/msg/Image"), for nodes that learn types at run
time (recorder, player)."""
from __future__ import annotations

import importlib


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
