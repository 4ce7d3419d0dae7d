"""What the policy node reports: every ActionChunk, PolicyStatus and /diagnostics at status_rate."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from vla_ros.msg import ActionChunk, PolicyStatus
from vla_ros.runtime.controller import Controller, Hold

STATE_LABELS = {PolicyStatus.STATE_UNCONFIGURED: "unconfigured", PolicyStatus.STATE_IDLE: "idle",
                PolicyStatus.STATE_RUNNING: "running", PolicyStatus.STATE_HOLDING: "holding",
                PolicyStatus.STATE_ESTOP: "estop", PolicyStatus.STATE_ERROR: "error"}


def status_state(hold: Hold) -> int:
    """PolicyStatus state for a hold: IDLE before any instruction or while inactive, HOLDING after a stop."""
    if hold is Hold.ESTOP:
        return PolicyStatus.STATE_ESTOP
    if hold in (Hold.NONE, Hold.DRY_RUN):
        return PolicyStatus.STATE_RUNNING
    if hold in (Hold.INACTIVE, Hold.NO_INSTRUCTION):
        return PolicyStatus.STATE_IDLE
    return PolicyStatus.STATE_HOLDING


class Telemetry:
    def __init__(self, node, controller: Controller, p, action_names, model_ms=(), callback_group=None):
        self.node, self.controller, self.p = node, controller, p
        self.model_ms = model_ms  # the model's own time per inference (ms), from the policy server
        self.action_names = list(action_names)
        self.period = 1.0 / p.control.rate
        self._lock = threading.Lock()
        self.latencies = deque(maxlen=200)
        self._loop_starts = deque(maxlen=1000)   # monotonic time of each control step (the loop's own view)
        self._loop_lateness = deque(maxlen=1000)  # s after its deadline each step started
        self._count = 0
        self.chunk_pub = node.create_publisher(ActionChunk, "~/action_chunk", 10)
        self.status_pub = node.create_publisher(PolicyStatus, "~/status", 10)
        self.diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = node.create_timer(1.0 / p.status_rate, self.publish_status, callback_group=callback_group)

    def destroy(self) -> None:
        n = self.node
        n.destroy_timer(self.timer)
        for pub in (self.chunk_pub, self.status_pub, self.diag_pub):
            n.destroy_publisher(pub)

    def loop_started(self, t: float, lateness: float) -> None:
        """The control loop's own timing, reported in /diagnostics (control_period_*, control_late_*)."""
        with self._lock:
            self._loop_starts.append(t)
            self._loop_lateness.append(lateness)

    def loop_stats(self) -> dict:
        with self._lock:
            starts, late = np.array(self._loop_starts), np.array(self._loop_lateness)
        if len(starts) < 3:
            return {}
        periods = np.diff(starts) * 1e3
        return {"control_period_mean_ms": float(periods.mean()),
                "control_period_abs_dev_p99_ms": float(np.percentile(np.abs(periods - self.period * 1e3), 99)),
                "control_late_p99_ms": float(np.percentile(late, 99) * 1e3)}

    def latest_latency(self) -> float:
        with self._lock:
            return self.latencies[-1] if self.latencies else 0.0

    def chunk(self, actions: np.ndarray, obs, latency: float) -> None:
        with self._lock:
            self.latencies.append(latency)
            self._count += 1
        msg = ActionChunk(names=self.action_names, action_space=self.p.action_space,
                          horizon=int(actions.shape[0]), dims=int(actions.shape[1]),
                          actions=actions.ravel().tolist(), period=self.period, inference_latency=latency,
                          instruction=obs.instruction)
        if obs.stamp_msg is not None:
            msg.observation_stamp = obs.stamp_msg
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.p.ee.frame if self.p.action_space == "ee_delta" else ""
        self.chunk_pub.publish(msg)

    def publish_status(self) -> None:
        c = self.controller
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else np.zeros(1)
            count, self._count = self._count, 0
        hold, detail = c.hold
        st = status_state(hold)
        now = self.node.get_clock().now()
        reason = "" if st == PolicyStatus.STATE_RUNNING else hold.value + (f": {detail}" if detail else "")
        msg = PolicyStatus(state=st, state_label=STATE_LABELS[st], instruction=c.instruction, dry_run=c.dry_run,
                           inference_rate=count * self.p.status_rate,
                           latency_p50=float(np.percentile(lat, 50)), latency_p90=float(np.percentile(lat, 90)),
                           latency_p99=float(np.percentile(lat, 99)),
                           queue_depth=c.queue_depth(now.nanoseconds * 1e-9), steps=c.steps,
                           dropped_frames=c.dropped_frames, last_error=c.last_error or reason)
        msg.header.stamp = now.to_msg()
        self.status_pub.publish(msg)
        level = {PolicyStatus.STATE_ESTOP: DiagnosticStatus.ERROR, PolicyStatus.STATE_HOLDING: DiagnosticStatus.WARN}
        diag = DiagnosticArray()
        diag.header.stamp = msg.header.stamp
        delay = c.expected_delay_ticks()
        diag.status.append(DiagnosticStatus(
            level=level.get(st, DiagnosticStatus.OK), name=f"{self.node.get_name()}: policy",
            message=msg.state_label + (f" ({reason})" if reason else ""), hardware_id="vla_ros",
            values=[KeyValue(key=k, value=v) for k, v in (
                ("inference_rate_hz", f"{msg.inference_rate:.2f}"), ("latency_p50_ms", f"{msg.latency_p50 * 1e3:.1f}"),
                ("latency_p99_ms", f"{msg.latency_p99 * 1e3:.1f}"), ("queue_depth", str(msg.queue_depth)),
                ("dropped_frames", str(msg.dropped_frames)),
                ("frames_received", str(c.frames_received)), ("dry_ticks", str(c.queue.dry_ticks)),
                ("execution", self.p.control.execution),
                ("inference_delay_ticks", "" if delay is None else str(delay)),
                ("model_p50_ms", f"{np.percentile(list(self.model_ms) or [0.0], 50):.2f}"),
                ("model_p99_ms", f"{np.percentile(list(self.model_ms) or [0.0], 99):.2f}"),
                ("control_rate_hz", f"{self.p.control.rate:g}"),
                *((k, f"{v:.3f}") for k, v in self.loop_stats().items()),
                ("last_error", c.last_error))]))
        self.diag_pub.publish(diag)
