"""Real-Time Chunking execution in the controller (control.execution: realtime), on a fake clock.

A simulated policy answers every request a fixed latency later. Its chunk's action i is the
number of the tick it was planned for (``obs.start_tick + i``), so the value executed at each tick
says whether the action ran when it was planned (not late, not early, none repeated or skipped).
Time advances in whole milliseconds; frames arrive at every control tick (the simulated Panda's
camera runs at the control rate) and are stamped when taken.
"""
import math

import numpy as np
import pytest

from vla_ros.runtime.controller import Controller, ControllerConfig, Hold

PERIOD_MS = 100  # 10 Hz, the simulated Panda's control rate


def planned(obs, chunk_size):
    """A chunk whose action i is the tick it was planned for."""
    return (obs.start_tick + np.arange(chunk_size, dtype=float))[:, None]


def run(latency_ms: int, chunk_size: int, seconds: float = 12.0, policy=planned, realtime: bool = True,
        refill_threshold: int = 4, ensemble: str = "latest"):
    """Drive a controller for `seconds` with a policy `latency_ms` slow. Returns (executed {tick: value},
    holds {tick: Hold}, requests [obs], controller)."""
    c = Controller(ControllerConfig(cameras=["front"], chunk_size=chunk_size, dim=1, period=PERIOD_MS / 1e3,
                                    camera_timeout=5.0, joint_timeout=5.0, inference_timeout=10.0,
                                    realtime=realtime, refill_threshold=refill_threshold, ensemble=ensemble))
    c.activate(0.0)
    c.set_instruction("go", 0.0)
    executed, holds, requests, pending = {}, {}, [], []
    img = np.zeros((4, 4, 3), np.uint8)
    for ms in range(int(seconds * 1000)):
        now = ms / 1e3
        for item in [p for p in pending if p[0] <= ms]:  # answers that arrived by now
            pending.remove(item)
            c.add_chunk(item[1], item[2], now)
        if ms % PERIOD_MS == 0:
            r = c.tick(now)
            holds[r.tick] = r.hold
            if r.action is not None:
                executed[r.tick] = float(r.action[0])
            c.feed_image("front", img, now, now)
            c.feed_joints(np.zeros(1), np.zeros(1, np.float32), now)
        obs = c.take_request(now)
        if obs is not None:
            requests.append(obs)
            pending.append((ms + max(1, latency_ms), obs, policy(obs, chunk_size)))
    return executed, holds, requests, c


def first_command(executed):
    return min(executed)


@pytest.mark.parametrize("latency_ms", [3, 100, 250, 500, 1000])
def test_a_long_enough_chunk_never_runs_dry_and_every_action_runs_at_its_planned_tick(latency_ms):
    executed, holds, requests, c = run(latency_ms, chunk_size=32)
    start = first_command(executed)
    dry = [t for t, h in holds.items() if t >= start and h is Hold.QUEUE_DRY]
    assert dry == [], f"held at ticks {dry[:10]}"
    assert all(t in executed for t in range(start, max(holds) + 1)), "a tick without a command"
    # The first chunk starts when it arrives (the arm held still until then, so nothing it planned
    # runs late): its actions run `shift` ticks after their planned ticks. Every chunk after it was
    # planned from where the arm really is: its actions run exactly at their planned ticks, and once
    # they have taken over, the first chunk's never come back.
    shift = start - executed[start]
    assert shift == math.ceil(latency_ms / PERIOD_MS) or (latency_ms < PERIOD_MS and shift <= 1)
    ticks = sorted(executed)
    takeover = next((t for t in ticks if executed[t] == t), None)
    assert takeover is not None, "no chunk after the first ever took over"
    first_chunk = [(t, executed[t]) for t in ticks if t < takeover and executed[t] != t - shift]
    assert first_chunk == [], f"the first chunk's actions off their tick: {first_chunk[:5]}"
    late = [(t, executed[t]) for t in ticks if t >= takeover and executed[t] != t]
    assert late == [], f"actions executed off their planned tick: {late[:5]}"
    assert c.dry_steps == 0


def test_requests_carry_the_committed_actions_and_the_delay_from_the_measured_latency():
    latency_ms = 500
    executed, holds, requests, c = run(latency_ms, chunk_size=32, seconds=6.0)
    assert requests[0].committed is None and requests[0].inference_delay == 0  # nothing queued yet
    later = requests[3:]
    assert later, "too few requests"
    for obs in later:
        assert obs.committed is not None
        # The committed actions are what the queue holds for the new chunk's ticks: the previous
        # chunk's plan for those ticks (from the third request on, a chunk planned on this timeline).
        np.testing.assert_array_equal(obs.committed[:, 0], obs.start_tick + np.arange(len(obs.committed)))
        # 0.5 s at 10 Hz: 5 ticks pass before the answer, the 6th is the new chunk's first.
        assert obs.inference_delay in (5, 6)
    assert c.expected_delay_ticks() == 5


def test_the_frozen_prefix_runs_as_committed_even_when_the_policy_ignores_it():
    def ignores_prefix(obs, h):
        a = planned(obs, h)
        a[:obs.inference_delay] = 1e6  # a server that knows nothing of committed actions
        return a

    executed, holds, requests, c = run(500, chunk_size=32, policy=ignores_prefix, seconds=6.0)
    assert max(executed.values()) < 1e6, "a frozen action was replaced by the policy's"
    assert sum(1 for o in requests if o.inference_delay) >= 3


def test_a_chunk_shorter_than_twice_the_latency_runs_dry():
    # The design limit the node logs: with one request in flight, a chunk must outlast two latencies.
    executed, holds, requests, c = run(500, chunk_size=8)
    start = first_command(executed)
    assert sum(1 for t, h in holds.items() if t >= start and h is Hold.QUEUE_DRY) > 20
    assert c.dry_steps > 20


def test_the_old_refill_threshold_execution_stops_and_goes_at_half_a_second():
    # Issue 25's finding, reproduced: chunk 8 at 10 Hz, refill at 7 left, ACT ensembling, 0.5 s latency.
    executed, holds, requests, c = run(500, chunk_size=8, realtime=False, refill_threshold=7, ensemble="ensemble")
    start = first_command(executed)
    ticks = [t for t in holds if t >= start]
    dry = sum(1 for t in ticks if holds[t] is Hold.QUEUE_DRY)
    assert dry / len(ticks) > 0.3
    # ... and the actions planned for the held ticks never run: each chunk's stale start is skipped.
    assert all(v == t for t, v in executed.items())
    assert len(executed) < 0.7 * len(ticks)


def test_a_fast_policy_replans_every_tick():
    executed, holds, requests, c = run(3, chunk_size=32, seconds=3.0)
    # one request per control tick: the newest frame always drives the next command
    assert len(requests) >= 29
    # at most the tick whose action already ran when the frame came is frozen
    assert all(o.inference_delay <= 1 for o in requests)
