"""The policy node's control loop: its own thread, absolute deadlines, bounded work per tick.

Each tick: one decision of the controller (vla_ros/runtime/controller.py), then one command
through the output (vla_ros/ros/outputs.py, whose safety layer limits it), or the hold. The
thread wakes at ``origin + k / control.rate`` on the node's clock (under use_sim_time the
deadline is in /clock time and polled every 2 ms); a tick missed by less than a period runs at
once, further behind the loop joins the timeline where the clock is. Optionally SCHED_FIFO
(`control.realtime_priority`).

`lock` is held across one tick's decision and its command, and by whoever stops the arm from
another thread (e-stop, deactivate, teardown) with `stop_now`: no command leaves after the
e-stop service has answered "latched".
"""
from __future__ import annotations

import os
import threading
import time
import traceback

from vla_ros.runtime.controller import Controller, Hold


class ControlLoop:
    def __init__(self, node, controller: Controller, p, output, gripper, telemetry):
        self.node, self.controller, self.p = node, controller, p
        self.output, self.gripper, self.telemetry = output, gripper, telemetry
        self.period = 1.0 / p.control.rate
        self.lock = threading.Lock()
        self._held = True                        # no command since the last hold
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vla_control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def stop_now(self, change) -> None:
        """Apply `change()` to the controller (e-stop, deactivate, ...) and stop the arm at once."""
        with self.lock:
            change()
            self._hold()

    def _hold(self) -> None:
        """Stop the arm once (again only after a command went out); the caller holds `lock`."""
        if not self._held:
            self._held = True
            self.output.hold()

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _run(self) -> None:
        c, log = self.controller, self.node.get_logger()
        sim_time = self.node.get_parameter("use_sim_time").value
        priority = self.p.control.realtime_priority
        if priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # this thread only (Linux)
                log.info(f"control loop runs with SCHED_FIFO priority {priority}")
            except (PermissionError, OSError, AttributeError) as exc:
                log.warning(f"control.realtime_priority {priority} not applied ({exc}); the control loop runs on "
                            "the normal scheduler")
        while not self._stop.is_set():
            now = self._now()
            k = c.last_tick + 1
            if c.deadline(k) < now - self.period:
                k = c.tick_at(now) + 1
            deadline = c.deadline(k)
            if deadline - now > 2 * self.period:
                deadline = now  # the clock jumped back: tick now (the controller restarts its timeline)
            while not self._stop.is_set():
                remaining = deadline - self._now()
                if remaining <= 0:
                    break
                # Under /clock the deadline is in simulated time: poll it (the sim steps at its own pace).
                self._stop.wait(min(remaining, 0.002) if sim_time else remaining)
            if self._stop.is_set():
                break
            try:
                self.telemetry.loop_started(time.monotonic(), self._now() - deadline)
                with self.lock:
                    self._step()
            except Exception as exc:  # never let the control loop die; hold and report
                c.command_failed(f"control loop error: {exc!r}")
                log.error(f"control loop error: {exc!r}\n{traceback.format_exc()}")

    def _step(self) -> None:
        c = self.controller
        r = c.tick(self._now())
        if r.hold_changed:
            self._log_hold(r)
        if r.hold_started:
            self._hold()
        if r.action is None or not r.command:
            self.output.continue_hold(r.tick)
            return
        if r.hold_changed:
            self.output.resume()
        action = r.action
        if self.gripper is not None:
            self.gripper.send(float(action[-1]))
            if self.p.action_space == "ee_delta":
                action = action[:-1]
        why = self.output.send(action, r.tick)
        if why is not None:
            c.command_failed(why)
        else:
            self._held = False

    def _log_hold(self, r) -> None:
        log = self.node.get_logger()
        if r.hold is Hold.NONE:
            log.info(f"running '{self.controller.instruction}'")
        elif r.hold is Hold.DRY_RUN:
            log.info(f"running '{self.controller.instruction}' in dry run (commanding nothing)")
        elif r.hold.is_fault:
            log.warning(f"holding the arm: {r.hold.value}" + (f" ({r.detail})" if r.detail else ""))
        elif r.hold is not Hold.INACTIVE:
            log.info(f"holding: {r.hold.value}" + (f" ({r.detail})" if r.detail else ""))
