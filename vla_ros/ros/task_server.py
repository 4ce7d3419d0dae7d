"""The ExecuteInstruction action server: one instruction per goal, until an outcome.

A new goal preempts (aborts) the running one, as ros2/examples' single-goal server does. A
goal succeeds only on a task success (`task_success` true) that arrives after it started: a
success still being repeated from the previous task is not counted (false -> true edge).
Cancel, timeout, step limit, e-stop, deactivation and node shutdown end the goal with their
outcome and make the arm hold.
"""
from __future__ import annotations

import math
import threading

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from vla_ros.action import ExecuteInstruction
from vla_ros.runtime.controller import Controller

R = ExecuteInstruction.Result


class TaskServer:
    def __init__(self, node, controller: Controller, p, set_instruction, feedback_latency):
        self.node, self.controller, self.p = node, controller, p
        self.set_instruction = set_instruction        # (text, source) -> error text or None
        self.feedback_latency = feedback_latency      # () -> latest inference latency (s)
        self._lock = threading.Lock()
        self._current = None
        self._running = 0
        self._shutdown = threading.Event()
        self._wake = threading.Event()
        self.server = ActionServer(
            node, ExecuteInstruction, "~/execute_instruction", self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted, cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup())

    def shutdown(self) -> None:
        """End the running goal (aborted: the node is shutting down)."""
        self._shutdown.set()
        self._wake.set()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running > 0

    def destroy(self) -> None:
        self.server.destroy()

    def _on_goal(self, goal):
        log = self.node.get_logger()
        if not self.controller.active or self._shutdown.is_set():
            log.warning("ExecuteInstruction goal rejected: the node is not active")
            return GoalResponse.REJECT
        text = goal.instruction.strip()
        if not text or len(text) > self.p["instruction.max_length"]:
            log.warning(f"ExecuteInstruction goal rejected: the instruction is empty or longer than "
                        f"{self.p['instruction.max_length']} characters")
            return GoalResponse.REJECT
        if not math.isfinite(goal.timeout) or goal.timeout < 0:
            log.warning(f"ExecuteInstruction goal rejected: timeout {goal.timeout} is not a finite number >= 0 "
                        "(0 uses default_timeout)")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle):
        with self._lock:
            previous, self._current = self._current, handle
        if previous is not None and previous.is_active:
            self.node.get_logger().info("new ExecuteInstruction goal preempts the running one")
            self._wake.set()
        handle.execute()

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _execute(self, handle):
        with self._lock:
            self._running += 1
        try:
            return self._run(handle)
        finally:
            with self._lock:
                self._running -= 1

    def _run(self, handle):
        goal, c = handle.request, self.controller
        self.set_instruction(goal.instruction, "ExecuteInstruction goal")
        c.start_task()
        start = self._now()
        timeout = goal.timeout if goal.timeout > 0 else self.p["default_timeout"]
        period = min(0.1, 1.0 / self.p["control.rate"])

        def finish(outcome, message, end=None):
            if end is not None:
                c.stop(f"{end}: '{goal.instruction}'")
            result = R(outcome=outcome, message=message, steps=c.steps, elapsed=self._now() - start)
            {R.OUTCOME_SUCCEEDED: handle.succeed, R.OUTCOME_CANCELED: handle.canceled}.get(outcome, handle.abort)()
            self.node.get_logger().info(f"ExecuteInstruction '{goal.instruction}': {message}")
            return result

        while True:
            elapsed = self._now() - start
            with self._lock:
                preempted = self._current is not handle
            if preempted:
                return finish(R.OUTCOME_PREEMPTED, "preempted by a newer goal")
            if self._shutdown.is_set():
                return finish(R.OUTCOME_ABORTED, f"aborted after {c.steps} steps: the node is shutting down", "aborted")
            if handle.is_cancel_requested:
                return finish(R.OUTCOME_CANCELED, f"canceled after {c.steps} steps", "goal canceled")
            if c.succeeded:
                return finish(R.OUTCOME_SUCCEEDED, f"succeeded after {c.steps} steps", "task succeeded")
            if c.estopped or not c.active:
                return finish(R.OUTCOME_ABORTED, "aborted: e-stop latched" if c.estopped
                              else "aborted: node deactivated", "aborted")
            if goal.max_steps and c.steps >= goal.max_steps:
                return finish(R.OUTCOME_MAX_STEPS, f"reached max_steps {goal.max_steps}", "step limit")
            if elapsed >= timeout:
                return finish(R.OUTCOME_TIMEOUT, f"timed out after {timeout:g} s", "timeout")
            handle.publish_feedback(ExecuteInstruction.Feedback(
                step=c.steps, elapsed=elapsed, latest_latency=self.feedback_latency(),
                queue_depth=c.queue_depth(self._now())))
            self._wake.wait(period)  # the goal's own feedback period; woken early by preemption/shutdown
            self._wake.clear()
