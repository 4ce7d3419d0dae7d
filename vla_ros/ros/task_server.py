"""The ExecuteInstruction action server: one instruction per goal, until an outcome.

A new goal preempts (aborts) the running one, as ros2/examples' single-goal server does. A
goal succeeds only on a task success (`task_success` true) that arrives after it started: a
success still being repeated from the previous task is not counted (false -> true edge).
Cancel, timeout, step limit, e-stop, deactivation and node shutdown end the goal with their
outcome and make the arm hold.

The node runs a single-threaded executor (rclpy's MultiThreadedExecutor could not keep up with
four 640x480 cameras at 30 Hz here: 137 ms callback latency and 60 % of the frames lost, against
11 ms and none lost single-threaded), so a goal must not hold the executor: `_execute` is a
coroutine awaiting a future that the periodic `_check` resolves.
"""
from __future__ import annotations

import math
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.task import Future

from vla_ros.action import ExecuteInstruction
from vla_ros.ros.inputs import instruction_problem
from vla_ros.runtime.controller import Controller

R = ExecuteInstruction.Result


class TaskServer:
    """Goals run as coroutines that a timer ends: nothing blocks an executor thread while a goal runs."""

    def __init__(self, node, controller: Controller, p, set_instruction, feedback_latency, callback_group=None):
        self.node, self.controller, self.p = node, controller, p
        self.set_instruction = set_instruction        # (text, source) -> error text or None
        self.feedback_latency = feedback_latency      # () -> latest inference latency (s)
        self._current = None                          # the newest accepted goal handle
        self._goals = {}                              # goal id -> (handle, start, timeout, future), while running
        self.server = ActionServer(
            node, ExecuteInstruction, "~/execute_instruction", self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted, cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=callback_group)
        period = min(0.1, max(0.02, 1.0 / p.control.rate))  # feedback and outcome checks
        # Runs only while a goal runs: an idle timer would wake the single executor thread for nothing.
        self.timer = node.create_timer(period, self._check, callback_group=callback_group)
        self.timer.cancel()

    def abort_all(self, reason: str) -> None:
        """End every running goal now (aborted), e.g. before the server is destroyed."""
        for key, (handle, start, _, done) in list(self._goals.items()):
            del self._goals[key]
            if handle.is_active:
                handle.abort()
            message = f"aborted after {self.controller.steps} steps: {reason}"
            self.node.get_logger().info(f"ExecuteInstruction '{handle.request.instruction}': {message}")
            done.set_result(R(outcome=R.OUTCOME_ABORTED, message=message, steps=self.controller.steps,
                              held_steps=self.controller.dry_steps, elapsed=max(0.0, self._now() - start)))

    def destroy(self) -> None:
        self.node.destroy_timer(self.timer)
        self.server.destroy()

    def _on_goal(self, goal):
        log = self.node.get_logger()
        if not self.controller.active:  # also false once the node shuts down
            log.warning("ExecuteInstruction goal rejected: the node is not active")
            return GoalResponse.REJECT
        problem = instruction_problem(goal.instruction.strip(), self.p.instruction.max_length)
        if problem:
            log.warning(f"ExecuteInstruction goal rejected: the instruction {problem}")
            return GoalResponse.REJECT
        if not math.isfinite(goal.timeout) or goal.timeout < 0:
            log.warning(f"ExecuteInstruction goal rejected: timeout {goal.timeout} is not a finite number >= 0 "
                        "(0 uses default_timeout)")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle):
        previous, self._current = self._current, handle
        if previous is not None and previous.is_active:
            self.node.get_logger().info("new ExecuteInstruction goal preempts the running one")
        handle.execute()

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    async def _execute(self, handle):
        goal, c = handle.request, self.controller
        self.set_instruction(goal.instruction, "ExecuteInstruction goal")
        c.start_task()
        timeout = goal.timeout if goal.timeout > 0 else self.p.default_timeout
        done = Future()
        self._goals[bytes(handle.goal_id.uuid)] = (handle, self._now(), timeout, done)
        self.timer.reset()
        self._check()
        return await done

    def _check(self):
        """Decide every running goal's outcome, or send its feedback."""
        c = self.controller
        for key, (handle, start, timeout, done) in list(self._goals.items()):
            goal = handle.request
            elapsed = self._now() - start
            if elapsed < 0:  # the clock jumped back (bag loop, simulator restart): count from now
                self._goals[key] = (handle, self._now(), timeout, done)
                elapsed = 0.0
            end = None  # (outcome, message, why the arm stops or None)
            if self._current is not handle:
                end = (R.OUTCOME_PREEMPTED, "preempted by a newer goal", None)
            elif handle.is_cancel_requested:
                end = (R.OUTCOME_CANCELED, f"canceled after {c.steps} steps", "goal canceled")
            elif c.succeeded:
                end = (R.OUTCOME_SUCCEEDED, f"succeeded after {c.steps} steps", "task succeeded")
            elif c.estopped or not c.active:
                end = (R.OUTCOME_ABORTED, "aborted: e-stop latched" if c.estopped else "aborted: node deactivated",
                       "aborted")
            elif goal.max_steps and c.steps >= goal.max_steps:
                end = (R.OUTCOME_MAX_STEPS, f"reached max_steps {goal.max_steps}", "step limit")
            elif elapsed >= timeout:
                end = (R.OUTCOME_TIMEOUT, f"timed out after {timeout:g} s", "timeout")
            if end is None:
                handle.publish_feedback(ExecuteInstruction.Feedback(
                    step=c.steps, elapsed=elapsed, latest_latency=self.feedback_latency(),
                    queue_depth=c.queue_depth(self._now())))
                continue
            outcome, message, stop = end
            if stop is not None:
                c.stop(f"{stop}: '{goal.instruction}'")
            del self._goals[key]
            {R.OUTCOME_SUCCEEDED: handle.succeed, R.OUTCOME_CANCELED: handle.canceled}.get(outcome, handle.abort)()
            self.node.get_logger().info(f"ExecuteInstruction '{goal.instruction}': {message}")
            done.set_result(R(outcome=outcome, message=message, steps=c.steps, held_steps=c.dry_steps,
                              elapsed=elapsed))
        if not self._goals:
            self.timer.cancel()
