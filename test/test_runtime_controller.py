"""Tests for vla_ros.runtime.controller (no ROS, no sleeps: `now` is a plain float, a fake clock).

Times are written as ``at(k)``: activation time T0 plus k control periods, so tick numbers
read directly off the calls. Each chunk's action i is ``[base + i, -(base + i)]``, so the
value a tick returns says which chunk and which index it came from.
"""

import dataclasses
import math

import numpy as np
import pytest

from vla_ros.runtime.controller import Controller, ControllerConfig, Hold, Observation

T0 = 100.0   # activation time (s on the node's clock)
P = 0.01     # control period (s)
H = 8        # chunk size
CFG = ControllerConfig(cameras=["front"], chunk_size=H, dim=2, period=P, camera_timeout=0.3, joint_timeout=0.3,
                       inference_timeout=0.5, refill_threshold=4)
CFG2 = dataclasses.replace(CFG, cameras=["front", "wrist"])
JOINTS = np.array([0.1, -0.2])
STATE = np.array([0.1, -0.2, 0.04], dtype=np.float32)
INSTRUCTION = "pick up the red cube"


def at(k: float) -> float:
    """The time of control tick k (activation at T0)."""
    return T0 + k * P


def frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, dtype=np.uint8)


def chunk(base: float, n: int = H) -> np.ndarray:
    i = np.arange(n, dtype=float)
    return np.stack([base + i, -(base + i)], axis=1)


def act(base: float) -> list:
    """The action a chunk(b) gives at index i, written as act(b + i)."""
    return [base, -base]


def feed_all(c: Controller, now: float, value: int = 1, stamp: float | None = None, cameras=("front",)) -> None:
    for cam in cameras:
        c.feed_image(cam, frame(value), now if stamp is None else stamp, now, stamp_msg=("msg", value))
    c.feed_joints(JOINTS, STATE, now)


def ready(cfg: ControllerConfig = CFG) -> Controller:
    """Active, following INSTRUCTION, inputs fresh at T0 (no request yet)."""
    c = Controller(cfg)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    feed_all(c, T0, cameras=cfg.cameras)
    return c


def running(cfg: ControllerConfig = CFG, base: float = 0.0):
    """Ready, a request from the frame of tick 0 answered with chunk(base): tick 0 is next."""
    c = ready(cfg)
    obs = c.take_request(T0)
    assert obs is not None and obs.start_tick == 0
    assert c.add_chunk(obs, chunk(base), T0) == H
    return c, obs


# ----------------------------------------------------------------------------- construction


def test_period_must_be_positive_and_finite():
    for bad in (0.0, -0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="period"):
            Controller(dataclasses.replace(CFG, period=bad))


def test_hold_fault_and_stopped_classification():
    faults = {Hold.STALE_INPUT, Hold.INFERENCE_TIMEOUT, Hold.INFERENCE_FAILED, Hold.QUEUE_DRY,
              Hold.UNSAFE_COMMAND, Hold.ESTOP, Hold.CONTROL_ERROR}
    for h in Hold:
        assert h.is_fault == (h in faults), h
        assert h.stopped == (h not in (Hold.NONE, Hold.INACTIVE, Hold.NO_INSTRUCTION)), h
    # Normal operation, not worth a warning:
    assert not Hold.WAITING_FOR_CHUNK.is_fault and not Hold.WAITING_FOR_INPUT.is_fault
    assert not Hold.DRY_RUN.is_fault and not Hold.TASK_ENDED.is_fault


# ----------------------------------------------------------------------------- start-up sequence


def test_inactive_controller_holds_and_never_requests():
    c = Controller(CFG)
    c.set_instruction(INSTRUCTION, T0)
    feed_all(c, T0)
    assert not c.active
    r = c.tick(T0)
    assert r.hold is Hold.INACTIVE and r.action is None and not r.command
    assert c.take_request(T0) is None


def test_startup_sequence_inactive_to_running():
    c = Controller(CFG)
    assert c.tick(T0 - 1.0).hold is Hold.INACTIVE
    # Inputs that arrive before activation do not count.
    feed_all(c, T0 - 0.01, value=9)
    c.activate(T0)
    assert c.active

    r = c.tick(at(0))
    assert (r.tick, r.hold, r.action, r.command) == (0, Hold.NO_INSTRUCTION, None, False)
    assert r.hold_changed and not r.hold_started

    assert c.set_instruction(INSTRUCTION, at(0)) is True
    r = c.tick(at(1))
    assert r.tick == 1 and r.hold is Hold.WAITING_FOR_INPUT and r.hold_changed and not r.hold_started
    assert r.detail == "none yet from camera:front, joint_states"
    assert c.take_request(at(1)) is None  # the pre-activation frame is forgotten

    # Inputs arrive: a frame stamped between ticks 1 and 2 (tick 1.5), received at tick 2.
    c.feed_image("front", frame(7), at(1.5), at(2), stamp_msg="stamp-1.5")
    c.feed_joints(JOINTS, STATE, at(2))
    obs = c.take_request(at(2))
    assert isinstance(obs, Observation)
    assert len(obs.images) == 1 and np.array_equal(obs.images[0], frame(7))
    assert obs.instruction == INSTRUCTION
    np.testing.assert_array_equal(obs.state, STATE)
    assert obs.state.dtype == np.float32
    assert obs.stamp == pytest.approx(at(1.5)) and obs.stamp_msg == "stamp-1.5"
    assert obs.start_tick == math.ceil((obs.stamp - T0) / P - 1e-6) == 2

    r = c.tick(at(2))
    assert (r.tick, r.hold, r.action) == (2, Hold.WAITING_FOR_CHUNK, None)
    assert r.hold_changed and not r.hold_started and not r.command
    assert not r.hold.is_fault  # the first chunk of an instruction: normal, not a fault
    assert c.take_request(at(2)) is None  # one request in flight at a time

    # The chunk arrives at tick 3: its action 0 (tick 2) is already in the past.
    assert c.add_chunk(obs, chunk(10), at(2.5)) == H - 1
    assert c.chunks == 1
    r = c.tick(at(3))
    assert (r.tick, r.hold, r.detail) == (3, Hold.NONE, "")
    np.testing.assert_array_equal(r.action, act(11))  # chunk[3 - start_tick]
    assert r.command and r.hold_changed and not r.hold_started
    assert c.hold == (Hold.NONE, "")
    r = c.tick(at(4))
    np.testing.assert_array_equal(r.action, act(12))
    assert not r.hold_changed
    assert c.steps == 2


def test_frames_fed_before_activate_do_not_count():
    c = Controller(CFG)
    c.set_instruction(INSTRUCTION, T0)
    feed_all(c, T0)                       # before activation
    c.activate(T0 + 0.001)
    assert c.joint_positions is None and c.state is None
    r = c.tick(at(1))
    assert r.hold is Hold.WAITING_FOR_INPUT and r.detail == "none yet from camera:front, joint_states"
    assert c.take_request(at(1)) is None
    feed_all(c, at(1))
    assert c.take_request(at(1)) is not None


def test_waiting_for_input_names_only_the_missing_inputs():
    c = Controller(CFG)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("front", frame(1), T0, T0)
    r = c.tick(at(0))
    assert r.hold is Hold.WAITING_FOR_INPUT and r.detail == "none yet from joint_states"
    assert c.take_request(at(0)) is None


def test_joint_states_count_only_with_the_state_vector_when_the_model_needs_state():
    c = Controller(CFG)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("front", frame(1), T0, T0)
    c.feed_joints(JOINTS, None, T0)   # positions without the model's state vector
    assert c.tick(at(0)).detail == "none yet from joint_states"
    assert c.take_request(at(0)) is None
    c.feed_joints(JOINTS, STATE, at(0))
    assert c.take_request(at(0)) is not None


def test_model_without_state_requests_with_state_none():
    c = Controller(dataclasses.replace(CFG, needs_state=False))
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("front", frame(1), T0, T0)
    c.feed_joints(JOINTS, None, T0)
    obs = c.take_request(T0)
    assert obs is not None and obs.state is None


def test_extra_inputs_are_watched():
    c = Controller(dataclasses.replace(CFG, extra_inputs={"ee_pose": 0.2}))
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    feed_all(c, T0)
    r = c.tick(at(0))
    assert r.hold is Hold.WAITING_FOR_INPUT and r.detail == "none yet from ee_pose"
    assert c.take_request(at(0)) is None
    c.feed("ee_pose", at(0))
    assert c.take_request(at(0)) is not None
    with pytest.raises(KeyError):
        c.feed("typo", at(0))


def test_observation_takes_newest_frame_per_camera_in_config_order():
    c = Controller(CFG2)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("wrist", frame(20), at(1), at(1), stamp_msg="w")
    c.feed_image("front", frame(10), at(1), at(1), stamp_msg="f1")
    c.feed_image("front", frame(11), at(2.2), at(3), stamp_msg="f2")  # replaces frame 10 unused
    c.feed_joints(JOINTS, STATE, at(3))
    assert c.dropped_frames == 1
    obs = c.take_request(at(3))
    assert [int(im[0, 0, 0]) for im in obs.images] == [11, 20]  # front, wrist
    # The newest stamp of all cameras places the chunk.
    assert obs.stamp == pytest.approx(at(2.2)) and obs.stamp_msg == "f2" and obs.start_tick == 3


def test_take_request_needs_a_frame_from_every_camera():
    c = Controller(CFG2)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    feed_all(c, T0, cameras=("front",))
    r = c.tick(at(0))
    assert r.hold is Hold.WAITING_FOR_INPUT and r.detail == "none yet from camera:wrist"
    assert c.take_request(at(0)) is None
    c.feed_image("wrist", frame(3), at(0), at(0))
    obs = c.take_request(at(0))
    assert obs is not None and len(obs.images) == 2


def test_request_waits_for_every_cameras_next_frame_at_most_frame_sync_window():
    c, _ = running(CFG2)
    window = CFG2.frame_sync_window
    for k in range(4):
        c.tick(at(k))
    assert c.take_request(at(3)) is None            # no camera has an unused frame
    c.feed_image("wrist", frame(5), at(3), at(3))   # only the wrist camera has a new one
    c.feed_joints(JOINTS, STATE, at(3))
    assert c.take_request(at(3)) is None            # wait for front's next frame ...
    assert c.take_request(at(3) + window - 0.01) is None
    obs = c.take_request(at(3) + window + 0.01)     # ... but not longer than the window
    assert obs is not None
    assert [int(im[0, 0, 0]) for im in obs.images] == [1, 5]  # front's (used) frame is still its newest


def test_request_leaves_as_soon_as_every_camera_has_a_new_frame():
    c, _ = running(CFG2)
    for k in range(4):
        c.tick(at(k))
    c.feed_image("wrist", frame(5), at(3), at(3))
    c.feed_joints(JOINTS, STATE, at(3))
    assert c.take_request(at(3.5)) is None
    c.feed_image("front", frame(6), at(3.5), at(3.5))
    obs = c.take_request(at(3.5))
    assert obs is not None and [int(im[0, 0, 0]) for im in obs.images] == [6, 5]
    assert obs.start_tick == 4                       # placed by the newest stamp (tick 3.5)
    assert c.frames_received == 4 and c.dropped_frames == 0


def test_start_tick_rounds_the_frame_stamp_up_to_a_tick():
    for stamp, expected in ((at(2), 2), (at(2) + 1e-9, 2), (at(2.01), 3), (at(2.5), 3), (at(2.99), 3),
                            (T0 - 0.004, 0)):
        c = Controller(CFG)
        c.activate(T0)
        c.set_instruction(INSTRUCTION, T0)
        feed_all(c, stamp + 0.001, stamp=stamp)
        obs = c.take_request(stamp + 0.001)
        assert obs.start_tick == expected, stamp - T0


# ----------------------------------------------------------------------------- timeline


def test_chunk_is_placed_by_its_frame_stamp_skipping_the_actions_already_past():
    c = ready()
    feed_all(c, at(2))                      # frame of tick 2
    obs = c.take_request(at(2))
    assert obs.start_tick == 2
    for k in (2, 3, 4):                     # inference takes L = 3 ticks
        assert c.tick(at(k)).hold is Hold.WAITING_FOR_CHUNK
    assert c.add_chunk(obs, chunk(0), at(4.5)) == H - 3  # first L actions skipped
    for k in range(5, 10):
        r = c.tick(at(k))
        assert r.tick == k and r.hold is Hold.NONE
        np.testing.assert_array_equal(r.action, act(k - obs.start_tick))  # chunk[t - start_tick]
    assert c.steps == 5


def test_chunk_entirely_in_the_past_is_dropped():
    c = ready()
    obs = c.take_request(at(0))
    for k in range(H + 2):
        c.tick(at(k))
    assert c.add_chunk(obs, chunk(0), at(H + 2)) == 0
    assert c.chunks == 0
    assert c.tick(at(H + 3)).hold is Hold.WAITING_FOR_CHUNK


def test_late_tick_skips_missed_ticks_never_replays_them():
    c, obs = running()
    np.testing.assert_array_equal(c.tick(at(0)).action, act(0))
    np.testing.assert_array_equal(c.tick(at(1)).action, act(1))
    r = c.tick(at(4))                        # the loop woke 3 periods late
    assert r.tick == 4 and r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(4))
    r = c.tick(at(5))
    assert r.tick == 5
    np.testing.assert_array_equal(r.action, act(5))
    assert c.steps == 4 and c.last_tick == 5


def test_early_or_repeated_tick_takes_the_next_tick():
    c, _ = running()
    assert c.tick(at(0)).tick == 0
    r = c.tick(at(0))                        # same time again: never the same tick twice
    assert r.tick == 1
    np.testing.assert_array_equal(r.action, act(1))


def test_tick_at_and_deadline():
    c = Controller(CFG)
    c.activate(T0)
    assert c.tick_at(T0) == 0
    assert c.tick_at(at(3) - 1e-10) == 3     # float noise below one period still counts
    assert c.tick_at(at(3.5)) == 3
    assert c.deadline(3) == pytest.approx(at(3))


def test_overlapping_chunks_are_ensembled_by_observation_age():
    c, _ = running()
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs2 = c.take_request(at(3))
    assert obs2.start_tick == 3
    assert c.add_chunk(obs2, chunk(100), at(3.5)) == H - 1   # its tick 3 is past
    w1 = math.exp(-0.01)                                     # ACT weights: older chunk w0 = 1
    r = c.tick(at(4))
    np.testing.assert_allclose(r.action, np.array(act(4)) * 1 / (1 + w1) + np.array(act(101)) * w1 / (1 + w1))


def test_latest_mode_uses_the_newest_chunk():
    c, _ = running(dataclasses.replace(CFG, ensemble="latest"))
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs2 = c.take_request(at(3))
    c.add_chunk(obs2, chunk(100), at(3.5))
    np.testing.assert_array_equal(c.tick(at(4)).action, act(101))


# ----------------------------------------------------------------------------- take_request


def test_take_request_none_while_a_request_is_in_flight():
    c = ready()
    obs = c.take_request(at(0))
    assert obs is not None
    feed_all(c, at(1), value=2)              # a new frame does not start a second request
    assert c.take_request(at(1)) is None
    c.add_chunk(obs, chunk(0), at(1))
    for k in range(1, 5):
        c.tick(at(k))
    assert c.take_request(at(4)) is not None


def test_take_request_never_uses_the_same_frame_twice():
    c, obs = running()
    for k in range(6):
        c.tick(at(k))
    assert c.queue_depth(at(5)) == 2         # low: a refill is due ...
    assert c.take_request(at(5)) is None     # ... but the only frame was used already
    feed_all(c, at(5), value=2)
    obs2 = c.take_request(at(5))
    assert obs2 is not None and obs2.request_id != obs.request_id
    assert int(obs2.images[0][0, 0, 0]) == 2


def test_take_request_none_while_the_queue_holds_more_than_refill_threshold():
    c, _ = running()
    feed_all(c, at(0), value=2)
    assert c.take_request(at(0)) is None     # 8 actions ahead
    for k in range(3):
        c.tick(at(k))
    assert c.queue_depth(at(2)) == 5
    assert c.take_request(at(2)) is None     # 5 > refill_threshold 4
    c.tick(at(3))
    assert c.queue_depth(at(3)) == 4
    obs = c.take_request(at(3))              # 4 <= 4: refill
    assert obs is not None and obs.start_tick == 0  # the frame's stamp, not the request time, places it


def test_refill_threshold_is_capped_below_the_chunk_size():
    c = Controller(dataclasses.replace(CFG, refill_threshold=50))
    assert c.queue.refill_threshold == H - 1


def test_take_request_none_while_estopped():
    c = ready()
    c.trigger_estop("button")
    assert c.take_request(at(0)) is None


def test_take_request_none_while_inactive():
    c = ready()
    c.deactivate()
    assert c.take_request(at(0)) is None


def test_take_request_none_without_instruction():
    c = Controller(CFG)
    c.activate(T0)
    feed_all(c, T0)
    assert c.take_request(T0) is None


def test_take_request_none_while_inputs_are_stale():
    c = ready()                              # inputs at tick 0
    c.feed_image("front", frame(2), at(40), at(40))  # a fresh, unused frame; joint_states from tick 0
    assert c.take_request(at(40)) is None    # joint_states 0.4 s old > joint_timeout 0.3
    assert c.tick(at(40)).hold is Hold.STALE_INPUT
    c.feed_joints(JOINTS, STATE, at(40))
    assert c.take_request(at(40)) is not None


def test_frame_stamp_from_the_future_or_not_finite_is_replaced_by_arrival_time():
    for stamp in (at(10) + 5.0, at(10) + 0.31, float("nan"), float("inf")):
        c = ready()
        c.feed_image("front", frame(3), stamp, at(10), stamp_msg="header")
        c.feed_joints(JOINTS, STATE, at(10))
        obs = c.take_request(at(10))
        assert obs.stamp == at(10), stamp
        assert obs.start_tick == 10 and obs.stamp_msg == "header"
    # Within camera_timeout the header stamp is kept.
    c = ready()
    c.feed_image("front", frame(3), at(10) - 0.29, at(10))
    c.feed_joints(JOINTS, STATE, at(10))
    assert c.take_request(at(10)).stamp == pytest.approx(at(10) - 0.29)


def test_a_frame_stamped_older_than_the_camera_timeout_is_stale_however_fresh_its_arrival():
    c = Controller(CFG)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("front", frame(3), at(10) - 0.31, at(10))  # a driver re-sending an old buffered frame
    c.feed_joints(JOINTS, STATE, at(10))
    r = c.tick(at(10))
    assert r.hold is Hold.STALE_INPUT and "camera:front last received 0.310 s ago" in r.detail
    assert c.take_request(at(10)) is None


# ----------------------------------------------------------------------------- stale inputs


def test_stale_camera_holds_with_age_and_clears_queue_then_resumes_after_a_new_chunk():
    c, _ = running()
    c.tick(at(0))
    c.feed_joints(JOINTS, STATE, at(20))     # joints keep coming, the camera stops (last: T0)
    r = c.tick(at(35))
    assert r.hold is Hold.STALE_INPUT and r.action is None and not r.command
    assert r.detail == "camera:front last received 0.350 s ago"
    assert r.hold_started and r.hold_changed and r.hold.is_fault
    assert c.queue_depth(at(35)) == 0        # queued actions are never executed after the hold
    assert c.last_error == "stale input: camera:front last received 0.350 s ago"
    r = c.tick(at(36))
    assert r.hold is Hold.STALE_INPUT and not r.hold_started and not r.hold_changed
    assert r.detail == "camera:front last received 0.360 s ago"

    feed_all(c, at(37), value=2)             # inputs return
    r = c.tick(at(37))
    assert r.hold is Hold.WAITING_FOR_CHUNK and r.hold_changed and not r.hold_started
    obs = c.take_request(at(37))
    assert obs.start_tick == 37
    c.add_chunk(obs, chunk(50), at(37.5))
    r = c.tick(at(38))
    assert r.hold is Hold.NONE and r.command
    np.testing.assert_array_equal(r.action, act(51))


def test_stale_joint_states_hold_with_age_and_resume():
    c, _ = running()
    c.tick(at(0))
    c.feed_image("front", frame(2), at(25), at(25))   # camera keeps coming, joints stop (last: T0)
    r = c.tick(at(31))
    assert r.hold is Hold.STALE_INPUT and r.hold_started
    assert r.detail == "joint_states last received 0.310 s ago"
    assert c.take_request(at(31)) is None
    c.feed_joints(JOINTS, STATE, at(32))
    r = c.tick(at(32))
    assert r.hold is Hold.WAITING_FOR_CHUNK and r.hold_changed and not r.hold_started
    obs = c.take_request(at(32))             # the camera frame of tick 25 is unused and still fresh
    assert obs is not None and obs.start_tick == 25
    assert c.add_chunk(obs, chunk(0), at(32.5)) == 0   # it covers ticks 25..32: all past, dropped
    assert c.tick(at(33)).hold is Hold.WAITING_FOR_CHUNK
    feed_all(c, at(33), value=3)
    obs = c.take_request(at(33))
    assert obs.start_tick == 33
    c.add_chunk(obs, chunk(0), at(33.5))
    r = c.tick(at(34))
    assert r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(1))


def test_both_inputs_stale_are_all_named():
    c, _ = running()
    c.tick(at(0))
    r = c.tick(at(40))
    assert r.detail == "camera:front last received 0.400 s ago, joint_states last received 0.400 s ago"


def test_stale_with_one_input_never_received_names_it():
    c = Controller(CFG)
    c.activate(T0)
    c.set_instruction(INSTRUCTION, T0)
    c.feed_image("front", frame(1), T0, T0)
    r = c.tick(at(40))
    assert r.hold is Hold.STALE_INPUT
    assert r.detail == "camera:front last received 0.400 s ago, joint_states never received"


def test_request_in_flight_when_inputs_go_stale_is_voided():
    c, _ = running()
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs = c.take_request(at(3))
    assert c.tick(at(40)).hold is Hold.STALE_INPUT
    assert c.add_chunk(obs, chunk(0), at(40)) == 0   # computed before the hold: never executed
    feed_all(c, at(41), value=3)
    assert c.take_request(at(41)) is not None        # not blocked by the voided request


def test_hold_started_only_on_the_tick_that_leaves_none():
    c = ready()
    seen = [c.tick(at(0))]                   # WAITING_FOR_CHUNK (after INACTIVE: a hold after a hold)
    obs = c.take_request(at(0))
    c.add_chunk(obs, chunk(0), at(0))
    seen.append(c.tick(at(1)))               # NONE
    seen.append(c.tick(at(2)))               # NONE
    c.trigger_estop("stop")
    seen.append(c.tick(at(3)))               # ESTOP: leaves NONE
    seen.append(c.tick(at(4)))               # ESTOP again
    c.reset_estop()
    seen.append(c.tick(at(5)))               # WAITING_FOR_CHUNK: a hold after a hold
    assert [r.hold for r in seen] == [Hold.WAITING_FOR_CHUNK, Hold.NONE, Hold.NONE, Hold.ESTOP, Hold.ESTOP,
                                      Hold.WAITING_FOR_CHUNK]
    assert [r.hold_started for r in seen] == [False, False, False, True, False, False]
    assert [r.hold_changed for r in seen] == [True, True, False, True, False, True]


# ----------------------------------------------------------------------------- inference problems


def test_inference_timeout_holds_drops_the_late_chunk_and_a_new_request_resumes():
    c, _ = running()
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs = c.take_request(at(3))
    for k in range(4, 8):                    # the rest of the first chunk runs out
        assert c.tick(at(k)).hold is Hold.NONE
    assert c.tick(at(8)).hold is Hold.QUEUE_DRY
    feed_all(c, at(50))                      # inputs stay fresh (the frame is unused, but a request is in flight)
    assert c.take_request(at(50)) is None
    r = c.tick(at(53))                       # 0.50 s in flight: not yet
    assert r.hold is Hold.QUEUE_DRY
    r = c.tick(at(54))                       # 0.51 s > inference_timeout
    assert r.hold is Hold.INFERENCE_TIMEOUT and r.hold.is_fault and r.hold_changed
    assert r.detail == "no chunk for 0.510 s"
    assert c.last_error == "inference slower than control.inference_timeout: no chunk for 0.510 s"
    assert c.add_chunk(obs, chunk(0), at(55)) == 0   # the timed-out request's chunk is dropped
    assert c.tick(at(55)).hold is Hold.INFERENCE_TIMEOUT

    obs2 = c.take_request(at(55))            # a new request (frame fed at tick 50) can go
    assert obs2 is not None and obs2.request_id != obs.request_id and obs2.start_tick == 50
    feed_all(c, at(56), value=3)
    assert c.tick(at(56)).hold is Hold.INFERENCE_TIMEOUT
    assert c.add_chunk(obs2, chunk(200), at(56.5)) > 0   # ticks 50..56 are past (see the count bug below)
    r = c.tick(at(57))
    assert r.hold is Hold.NONE and r.command
    np.testing.assert_array_equal(r.action, act(207))


def test_inference_failed_holds_until_a_chunk_arrives():
    c = ready()
    obs = c.take_request(at(0))
    c.inference_failed(obs, "RuntimeError: boom")
    r = c.tick(at(0))
    assert r.hold is Hold.INFERENCE_FAILED and r.detail == "RuntimeError: boom" and r.hold.is_fault
    assert c.last_error == "inference failed: RuntimeError: boom"
    assert c.tick(at(1)).hold is Hold.INFERENCE_FAILED
    assert c.take_request(at(1)) is None     # its frame was used
    feed_all(c, at(1), value=2)
    obs2 = c.take_request(at(1))
    assert obs2 is not None
    assert c.tick(at(2)).hold is Hold.INFERENCE_FAILED
    c.add_chunk(obs2, chunk(0), at(2.5))
    r = c.tick(at(3))
    assert r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(2))


def test_inference_failed_while_running_holds_despite_queued_actions():
    c, _ = running()
    c.tick(at(0))
    c.inference_failed(None, "the policy server (pid 1) exited with code -9")
    r = c.tick(at(1))
    assert r.hold is Hold.INFERENCE_FAILED and r.action is None and r.hold_started


def test_command_failed_holds_unsafe_until_a_chunk_arrives():
    c, _ = running()
    c.tick(at(0))
    c.command_failed("joint 2 step 0.9 rad exceeds max_step")
    assert c.last_error == "unsafe command rejected: joint 2 step 0.9 rad exceeds max_step"
    r = c.tick(at(1))
    assert r.hold is Hold.UNSAFE_COMMAND and r.hold_started and r.hold.is_fault and r.action is None
    assert r.detail == "joint 2 step 0.9 rad exceeds max_step"
    assert c.queue_depth(at(1)) == 0
    assert c.tick(at(2)).hold is Hold.UNSAFE_COMMAND
    feed_all(c, at(2), value=2)
    obs = c.take_request(at(2))
    c.add_chunk(obs, chunk(30), at(2))
    r = c.tick(at(3))
    assert r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(31))


def test_command_failed_voids_the_request_in_flight():
    c, _ = running()
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs = c.take_request(at(3))
    c.command_failed("nan")
    assert c.add_chunk(obs, chunk(0), at(4)) == 0
    assert c.tick(at(4)).hold is Hold.UNSAFE_COMMAND


def test_queue_dry_after_chunks_ran_out_is_a_fault_unlike_waiting_for_the_first_chunk():
    c = ready()
    obs = c.take_request(at(0))
    r = c.tick(at(0))
    assert r.hold is Hold.WAITING_FOR_CHUNK and not r.hold.is_fault
    c.add_chunk(obs, chunk(0), at(0.5))
    for k in range(1, H):
        assert c.tick(at(k)).hold is Hold.NONE
    r = c.tick(at(H))                        # no new frame came: no refill
    assert r.hold is Hold.QUEUE_DRY and r.hold.is_fault and r.hold_started and r.action is None
    assert c.last_error == "action queue ran dry"
    assert c.steps == H - 1


# Regression (Controller.tick popped the queue only when no hold applied):
# during INFERENCE_FAILED / INFERENCE_TIMEOUT / UNSAFE_COMMAND (and blocking holds) the ticks that pass
# are never marked executed in the ChunkQueue, so add_chunk's documented return value ("how many of
# its actions are still ahead (0: dropped)") counts actions for ticks already past, and a chunk that
# lies entirely in the past is accepted (returns 8, not 0), clears the error hold and counts in
# `chunks`; the next tick then reports QUEUE_DRY instead of INFERENCE_FAILED. The action a tick
# returns is still the right one (chunk[t - start_tick]).
def test_add_chunk_counts_only_actions_still_ahead_after_an_error_hold():
    c = ready()                              # frame of tick 0
    c.inference_failed(None, "boom")         # an earlier request failed: hold INFERENCE_FAILED
    obs = c.take_request(at(0))
    assert obs.start_tick == 0
    for k in range(6):                       # ticks 0..5 pass while holding
        assert c.tick(at(k)).hold is Hold.INFERENCE_FAILED
    assert c.add_chunk(obs, chunk(0), at(5.5)) == 2   # only ticks 6 and 7 are still ahead


def test_chunk_entirely_in_the_past_after_an_error_hold_is_dropped():
    c = ready()
    c.inference_failed(None, "boom")
    obs = c.take_request(at(0))
    for k in range(H + 2):                   # ticks 0..9 pass while holding
        c.tick(at(k))
    assert c.add_chunk(obs, chunk(0), at(H + 2)) == 0
    assert c.chunks == 0
    assert c.tick(at(H + 2)).hold is Hold.INFERENCE_FAILED


# ----------------------------------------------------------------------------- safety switches


def test_estop_latches_until_reset():
    c, _ = running()
    c.tick(at(0))
    c.trigger_estop("button pressed")
    assert c.estopped
    feed_all(c, at(1), value=2)
    for k in range(1, 4):
        r = c.tick(at(k))
        assert r.hold is Hold.ESTOP and r.detail == "button pressed" and r.action is None
        assert c.take_request(at(k)) is None
    assert c.last_error == "e-stop latched: button pressed"
    assert c.reset_estop() is True
    assert not c.estopped and c.last_error == ""
    assert c.reset_estop() is False          # not latched any more
    r = c.tick(at(4))
    assert r.hold is Hold.WAITING_FOR_CHUNK  # nothing from before the e-stop is executed
    obs = c.take_request(at(4))
    c.add_chunk(obs, chunk(0), at(4))
    assert c.tick(at(5)).hold is Hold.NONE


def test_reset_estop_when_not_latched_returns_false():
    c = ready()
    assert c.reset_estop() is False


def test_chunk_requested_before_estop_is_dropped_after_reset():
    c = ready()
    obs = c.take_request(at(0))
    c.trigger_estop("x")
    c.reset_estop()
    assert c.add_chunk(obs, chunk(0), at(1)) == 0
    assert c.tick(at(1)).hold is Hold.WAITING_FOR_CHUNK


def test_dry_run_returns_actions_without_commanding():
    c, _ = running()
    r = c.tick(at(0))
    assert r.hold is Hold.NONE and r.command
    c.set_dry_run(True)
    r = c.tick(at(1))
    assert r.hold is Hold.DRY_RUN and not r.command and not r.hold.is_fault
    np.testing.assert_array_equal(r.action, act(1))
    assert r.hold_started and r.hold_changed  # the arm was following the policy: stop it
    r = c.tick(at(2))
    assert r.hold is Hold.DRY_RUN and not r.hold_started and not r.hold_changed and not r.command
    c.set_dry_run(False)
    r = c.tick(at(3))
    assert r.hold is Hold.NONE and r.command and r.hold_changed and not r.hold_started
    np.testing.assert_array_equal(r.action, act(3))
    assert c.steps == 4


def test_dry_run_from_config_never_commands():
    c, _ = running(dataclasses.replace(CFG, dry_run=True))
    assert c.dry_run
    r = c.tick(at(0))
    assert r.hold is Hold.DRY_RUN and not r.command and not r.hold_started
    np.testing.assert_array_equal(r.action, act(0))


# ----------------------------------------------------------------------------- task success


def test_success_repeated_from_before_start_task_does_not_count():
    c = ready()
    c.note_success(True)                     # the previous task's success, still being published
    c.start_task()
    c.note_success(True)
    assert not c.succeeded
    c.note_success(False)
    assert not c.succeeded
    c.note_success(True)                     # a false -> true edge after the start
    assert c.succeeded


def test_success_after_start_counts_when_last_value_was_false():
    c = ready()
    c.note_success(False)
    c.start_task()
    c.note_success(True)
    assert c.succeeded


def test_success_after_start_counts_when_none_was_seen():
    c = ready()
    c.start_task()
    c.note_success(True)
    assert c.succeeded


def test_start_task_and_set_instruction_reset_success_and_steps():
    c, _ = running()
    c.start_task()
    c.note_success(True)
    c.tick(at(0))
    assert c.succeeded and c.steps == 1
    c.start_task()
    assert not c.succeeded and c.steps == 0
    c.note_success(True)                     # still true from the previous goal: no edge
    assert not c.succeeded
    c.note_success(False)
    c.note_success(True)
    assert c.succeeded
    c.set_instruction(INSTRUCTION, at(1))
    assert not c.succeeded


# ----------------------------------------------------------------------------- instruction and stop


def test_stop_holds_task_ended_until_a_new_instruction():
    c, _ = running()
    c.tick(at(0))
    c.stop("goal canceled")
    assert c.instruction == ""
    feed_all(c, at(1), value=2)
    r = c.tick(at(1))
    assert r.hold is Hold.TASK_ENDED and r.detail == "goal canceled" and r.hold.stopped
    assert r.hold_started and r.action is None and not r.hold.is_fault
    assert c.take_request(at(1)) is None
    r = c.tick(at(2))
    assert r.hold is Hold.TASK_ENDED and not r.hold_changed
    assert c.set_instruction("stack the blocks", at(2)) is True
    r = c.tick(at(3))
    assert r.hold is Hold.WAITING_FOR_CHUNK
    assert c.take_request(at(3)).instruction == "stack the blocks"


def test_stop_with_another_hold_reports_it():
    c, _ = running()
    c.stop("aborted by the safety layer", hold=Hold.CONTROL_ERROR)
    r = c.tick(at(0))
    assert r.hold is Hold.CONTROL_ERROR and r.detail == "aborted by the safety layer"


def test_same_instruction_after_stop_restarts():
    c, _ = running()
    for k in range(3):
        c.tick(at(k))
    assert c.steps == 3
    c.stop("succeeded")
    assert c.tick(at(3)).hold is Hold.TASK_ENDED
    c.set_instruction(INSTRUCTION, at(4))
    assert c.steps == 0
    r = c.tick(at(4))
    assert r.hold is Hold.WAITING_FOR_CHUNK  # the old queue is gone
    feed_all(c, at(4), value=2)
    obs = c.take_request(at(4))
    assert obs is not None and obs.instruction == INSTRUCTION
    c.add_chunk(obs, chunk(0), at(4.5))
    r = c.tick(at(5))
    assert r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(1))


def test_same_instruction_while_running_keeps_the_queue():
    c, _ = running()
    c.tick(at(0))
    assert c.set_instruction(INSTRUCTION, at(1)) is False
    r = c.tick(at(1))
    assert r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(1))
    assert c.steps == 2


def test_new_instruction_clears_the_queue_and_voids_the_request():
    c, _ = running()
    for k in range(4):
        c.tick(at(k))
    feed_all(c, at(3), value=2)
    obs = c.take_request(at(3))
    assert c.set_instruction("something else", at(4)) is True
    assert c.steps == 0
    assert c.add_chunk(obs, chunk(0), at(4)) == 0
    assert c.tick(at(4)).hold is Hold.WAITING_FOR_CHUNK


def test_empty_instruction_holds_no_instruction():
    c, _ = running()
    c.tick(at(0))
    c.set_instruction("", at(1))
    r = c.tick(at(1))
    assert r.hold is Hold.NO_INSTRUCTION and r.hold_started and not r.hold.stopped


# ----------------------------------------------------------------------------- clock jumps


def test_clock_jumped_back_resets_the_timeline():
    c, _ = running()
    for k in range(200):                     # 2 s of control
        feed_all(c, at(k), value=k % 250)
        obs = c.take_request(at(k))
        if obs is not None:
            c.add_chunk(obs, chunk(k), at(k))
        assert c.tick(at(k)).hold is Hold.NONE
    back = at(50)                            # the simulation restarted: 1.5 s back
    r = c.tick(back)
    assert r.tick == 0                       # the timeline starts again from here
    assert r.action is None
    assert c.queue_depth(back) == 0          # nothing planned on the old timeline survives
    r = c.tick(back + P)
    assert r.tick == 1
    assert c.deadline(1) == pytest.approx(back + P)


def test_clock_jitter_back_within_two_periods_is_not_a_reset():
    c, _ = running()
    for k in range(60):
        c.tick(at(k))
    r = c.tick(at(58.5))                     # 1.5 periods back: a late tick, not a reset
    assert r.tick == 60
    r = c.tick(at(40))                       # 0.2 s back: a jump, the timeline restarts
    assert r.tick == 0


# Regression (Controller.tick -> _reset_timeline did not reset the watchdog): after the clock jumps
# back, the timeline is reset but the Watchdog is not, and Watchdog.feed never moves an input's
# last arrival backwards. Fresh inputs fed with the new (earlier) clock are therefore ignored and
# the controller holds STALE_INPUT (with negative ages, "last received -1.490 s ago") until the
# clock has caught up with the time before the jump, so the arm cannot resume after a bag or
# simulation restart.
def test_clock_jumped_back_resumes_with_chunks_placed_by_new_stamps():
    c, _ = running()
    for k in range(200):
        feed_all(c, at(k), value=k % 250)
        obs = c.take_request(at(k))
        if obs is not None:
            c.add_chunk(obs, chunk(k), at(k))
        c.tick(at(k))
    back = at(50)
    c.tick(back)                             # timeline reset: tick 0 is `back`
    feed_all(c, back + P, value=1)           # fresh inputs on the new clock
    r = c.tick(back + P)
    assert r.hold is not Hold.STALE_INPUT, r.detail
    obs = c.take_request(back + P)
    assert obs is not None and obs.start_tick == 1
    c.add_chunk(obs, chunk(500), back + P)
    r = c.tick(back + 2 * P)
    assert r.tick == 2 and r.hold is Hold.NONE
    np.testing.assert_array_equal(r.action, act(501))


# ----------------------------------------------------------------------------- lifecycle


def test_deactivate_holds_inactive_and_forgets_the_queue():
    c, _ = running()
    c.tick(at(0))
    c.deactivate()
    assert not c.active
    r = c.tick(at(1))
    assert r.hold is Hold.INACTIVE and r.hold_started and not r.hold.is_fault and not r.hold.stopped
    assert c.queue_depth(at(1)) == 0
    c.activate(at(10))                       # inputs from before count as never received
    r = c.tick(at(10))
    assert r.tick == 0 and r.hold is Hold.WAITING_FOR_INPUT


def test_shutdown_holds_shutdown_even_when_active():
    c, _ = running()
    c.tick(at(0))
    c.shutdown()
    assert not c.active
    r = c.tick(at(1))
    assert r.hold is Hold.SHUTDOWN and r.hold_started and r.action is None
    assert c.take_request(at(1)) is None
    c.activate(at(2))
    assert c.tick(at(2)).hold is Hold.SHUTDOWN


# ----------------------------------------------------------------------------- telemetry


def test_queue_depth_and_peek():
    c = ready()
    assert c.queue_depth(at(0)) == 0
    assert c.peek(0) is None
    obs = c.take_request(at(0))
    c.add_chunk(obs, chunk(0), at(0))
    assert c.queue_depth(at(0)) == H
    np.testing.assert_array_equal(c.peek(3), act(3))   # peeking does not consume
    np.testing.assert_array_equal(c.peek(3), act(3))
    assert c.peek(H) is None
    c.tick(at(0))
    c.tick(at(1))
    assert c.queue_depth(at(1)) == H - 2               # from the next tick (2) on
    assert c.queue_depth(at(5)) == H - 5               # by the clock, ticks 2..4 are past
    np.testing.assert_array_equal(c.peek(2), act(2))


def test_hold_property_reports_last_tick():
    c = ready()
    assert c.hold == (Hold.INACTIVE, "")     # nothing ticked yet since construction
    c.tick(at(0))
    assert c.hold == (Hold.WAITING_FOR_CHUNK, "")
    c.trigger_estop("why")
    c.tick(at(1))
    assert c.hold == (Hold.ESTOP, "why")
