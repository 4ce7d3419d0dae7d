"""Tests for vla_ros.runtime.chunk_queue (no sleeps: ticks are simulated)."""

import math
import random
import threading

import numpy as np
import pytest

from vla_ros.runtime.chunk_queue import ChunkQueue


def col(*values):
    """A (n, 1) chunk from scalars."""
    return np.array(values, dtype=float)[:, None]


# ----------------------------------------------------------------------------- arithmetic


def test_single_chunk_pops_in_order_then_dry():
    q = ChunkQueue(chunk_size=3, dim=1, refill_threshold=1)
    assert q.add_chunk(col(10, 11, 12), start_tick=0) == 3
    assert q.pop(0)[0] == 10
    assert q.pop(1)[0] == 11
    assert q.pop(2)[0] == 12
    assert q.pop(3) is None  # dry: the node must hold
    assert q.dry_ticks == 1


def test_ensemble_two_chunks_act_weights():
    # Chunk A from tick 0, chunk B from tick 2; both predict ticks 2 and 3.
    # ACT weights with m = 0.01: oldest (A) gets w0 = exp(0) = 1, B gets w1 = exp(-0.01).
    q = ChunkQueue(chunk_size=4, dim=1, mode="ensemble", ensemble_decay=0.01, refill_threshold=1)
    q.add_chunk(col(10, 11, 12, 13), start_tick=0)
    q.add_chunk(col(20, 21, 22, 23), start_tick=2)
    assert q.pop(0)[0] == 10
    assert q.pop(1)[0] == 11
    w1 = math.exp(-0.01)  # 0.9900498337491681
    # tick 2: (1*12 + 0.9900498*20) / 1.9900498 = 31.800997 / 1.9900498 = 15.9800002
    assert q.pop(2)[0] == pytest.approx((12 + w1 * 20) / (1 + w1), abs=1e-12)
    assert q.peek(2)[0] == pytest.approx(15.9800001667, abs=1e-9)  # same tick again: same value
    # tick 3: (13 + w1*21) / (1 + w1)
    assert q.pop(3)[0] == pytest.approx((13 + w1 * 21) / (1 + w1), abs=1e-12)
    # tick 4, 5: only B remains.
    assert q.pop(4)[0] == 22
    assert q.pop(5)[0] == 23


def test_ensemble_three_chunks_weights_4_2_1_over_7():
    # m = ln 2 makes w = 1, 1/2, 1/4 -> normalised 4/7, 2/7, 1/7 (oldest first).
    q = ChunkQueue(chunk_size=3, dim=2, ensemble_decay=math.log(2), refill_threshold=0)
    q.add_chunk(np.array([[0, 0], [0, 0], [7, 70]]), start_tick=0)
    q.add_chunk(np.array([[0, 0], [14, 140], [0, 0]]), start_tick=1)
    q.add_chunk(np.array([[28, 280], [0, 0], [0, 0]]), start_tick=2)
    q.pop(0)
    q.pop(1)
    # tick 2: 4/7*7 + 2/7*14 + 1/7*28 = 4 + 4 + 4 = 12 ; second column 10x.
    np.testing.assert_allclose(q.pop(2), [12.0, 120.0], rtol=1e-12)


def test_ensemble_zero_decay_is_plain_mean():
    q = ChunkQueue(chunk_size=2, dim=1, ensemble_decay=0.0, refill_threshold=0)
    q.add_chunk(col(0, 1), 0)
    q.add_chunk(col(3, 99), 1)
    q.pop(0)
    assert q.pop(1)[0] == pytest.approx((1 + 3) / 2)


def test_ensemble_age_is_observation_tick_not_arrival_order():
    # The chunk from the *older* observation arrives last; it must still get w0.
    q = ChunkQueue(chunk_size=4, dim=1, ensemble_decay=math.log(2), refill_threshold=0)
    q.add_chunk(col(20, 21, 22, 23), start_tick=1)  # newer observation, arrives first
    q.add_chunk(col(10, 11, 12, 13), start_tick=0)  # older observation
    q.pop(0)
    # tick 1: older 11 weight 2/3, newer 20 weight 1/3 -> 22/3 + 20/3 = 14
    assert q.pop(1)[0] == pytest.approx(14.0)


def test_latest_mode_uses_newest_chunk_only():
    q = ChunkQueue(chunk_size=4, dim=1, mode="latest", refill_threshold=1)
    q.add_chunk(col(10, 11, 12, 13), start_tick=0)
    q.add_chunk(col(20, 21, 22, 23), start_tick=2)
    assert q.pop(0)[0] == 10
    assert q.pop(1)[0] == 11
    assert q.pop(2)[0] == 20
    assert q.pop(3)[0] == 21
    # Newest by observation tick even if it arrives before an older chunk:
    q.add_chunk(col(1, 2, 3, 4), start_tick=1)
    assert q.pop(4)[0] == 22


def test_stale_actions_are_skipped():
    q = ChunkQueue(chunk_size=5, dim=1, refill_threshold=1)
    for t in range(3):
        q.pop(t)  # ticks 0, 1, 2 executed (dry)
    # Observation from tick 1: actions for ticks 1 and 2 are in the past -> 3 kept.
    assert q.add_chunk(col(1, 2, 3, 4, 5), start_tick=1) == 3
    assert q.pop(3)[0] == 3
    assert q.remaining(4) == 2
    # A chunk entirely in the past is dropped.
    assert q.add_chunk(col(9, 9), start_tick=0) == 0


def test_remaining_and_needs_refill():
    q = ChunkQueue(chunk_size=6, dim=1, refill_threshold=2)
    assert q.remaining(0) == 0 and q.needs_refill(0)
    q.add_chunk(col(0, 1, 2, 3, 4, 5), 0)
    assert q.remaining(0) == 6 and not q.needs_refill(0)
    assert q.remaining(3) == 3 and not q.needs_refill(3)
    assert q.remaining(4) == 2 and q.needs_refill(4)  # 2 <= threshold 2
    rid = q.mark_request(4)
    assert not q.needs_refill(4)  # one request at a time
    q.cancel_request(rid)
    assert q.needs_refill(4)
    rid = q.mark_request(4)
    q.add_chunk(col(4, 5, 6, 7, 8, 9), 4, request_id=rid)
    assert q.remaining(4) == 6
    assert q.needs_refill(8)  # the answer ended the request: the next one can go


def test_remaining_walks_over_gaps():
    q = ChunkQueue(chunk_size=3, dim=1, refill_threshold=0)
    q.add_chunk(col(0, 1, 2), 0)
    q.add_chunk(col(5, 6, 7), 5)  # gap at ticks 3, 4
    assert q.remaining(0) == 3
    assert q.remaining(5) == 3


def test_clear_drops_actions_and_late_results():
    q = ChunkQueue(chunk_size=4, dim=1, refill_threshold=1)
    q.add_chunk(col(1, 2, 3, 4), 0)
    rid = q.mark_request(1)
    q.clear()
    assert q.remaining(0) == 0 and q.needs_refill(0)  # clear() also forgot the request
    assert q.pop(0) is None
    # The answer to the request sent before clear() arrives late: dropped.
    assert q.add_chunk(col(1, 2, 3, 4), 1, request_id=rid) == 0
    assert q.remaining(1) == 0
    # A request made after clear() is accepted.
    rid2 = q.mark_request(1)
    assert q.add_chunk(col(1, 2, 3, 4), 1, request_id=rid2) == 4


def test_rejects_bad_chunks():
    q = ChunkQueue(chunk_size=3, dim=2)
    with pytest.raises(ValueError, match="shape"):
        q.add_chunk(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="length"):
        q.add_chunk(np.zeros((4, 2)), 0)
    with pytest.raises(ValueError, match="NaN"):
        q.add_chunk(np.array([[0, 0], [np.nan, 0]]), 0)
    assert q.remaining(0) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(chunk_size=0, dim=1),
        dict(chunk_size=4, dim=0),
        dict(chunk_size=4, dim=1, mode="average"),
        dict(chunk_size=4, dim=1, refill_threshold=4),
        dict(chunk_size=4, dim=1, refill_threshold=-1),
        dict(chunk_size=4, dim=1, ensemble_decay=float("nan")),
    ],
)
def test_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        ChunkQueue(**kwargs)


def test_chunk_is_copied():
    q = ChunkQueue(chunk_size=2, dim=1, refill_threshold=0)
    chunk = col(1, 2)
    q.add_chunk(chunk, 0)
    chunk[:] = 99
    assert q.pop(0)[0] == 1


# ----------------------------------------------------------------------------- simulation


def simulate(chunk_size, latency, threshold, mode="ensemble", ticks=5000, jitter=0, seed=0):
    """Deterministic control loop + inference thread, in ticks.

    Every tick: deliver inference results due now, start a request if the queue asks
    for one (observation = this tick), then pop the action for this tick. The
    inference result for the observation of tick t0 predicts action value k for tick
    t0 + i = k (so a correctly aligned pop returns exactly its own tick number, also
    after ensembling). Latency is ``latency`` ticks, plus up to ``-jitter`` ticks less.

    Returns (dry ticks after the first action, number of requests, first action tick).
    """
    rng = random.Random(seed)
    q = ChunkQueue(chunk_size, 2, mode=mode, refill_threshold=threshold)
    pending = []  # (arrival tick, observation tick, request id)
    first_action = None
    dry = 0
    requests = 0
    for t in range(ticks):
        for item in [p for p in pending if p[0] == t]:
            pending.remove(item)
            _, t0, rid = item
            ks = np.arange(t0, t0 + chunk_size, dtype=float)
            q.add_chunk(np.stack([ks, -ks], axis=1), start_tick=t0, request_id=rid)
        if q.needs_refill(t):
            requests += 1
            lat = latency - (rng.randint(0, jitter) if jitter else 0)
            pending.append((t + lat, t, q.mark_request(t)))
        a = q.pop(t)
        if a is None:
            if first_action is not None:
                dry += 1
        else:
            if first_action is None:
                first_action = t
            # Plain comparisons: assert_allclose would dominate the run time.
            assert abs(a[0] - t) <= 1e-9 * (1 + t) and abs(a[1] + t) <= 1e-9 * (1 + t), (t, a)
    assert q.dry_ticks == dry + (first_action if first_action is not None else ticks)
    return dry, requests, first_action


# (H, L, threshold) with 1 < L <= threshold and threshold < H - L.
NO_MISS_COMBOS = [
    (10, 2, 2),
    (10, 3, 4),
    (16, 5, 5),
    (16, 4, 8),
    (32, 9, 12),
    (50, 15, 20),
    (100, 29, 30),
]


@pytest.mark.parametrize("mode", ["ensemble", "latest"])
@pytest.mark.parametrize("chunk_size,latency,threshold", NO_MISS_COMBOS)
def test_simulation_never_misses_when_latency_fits_threshold(chunk_size, latency, threshold, mode):
    dry, requests, first = simulate(chunk_size, latency, threshold, mode=mode, ticks=5000)
    assert first == latency  # start-up: nothing to do until the first chunk lands
    assert dry == 0
    # Steady state: one request per (H - threshold) ticks.
    assert requests == pytest.approx(5000 / (chunk_size - threshold), rel=0.05)


@pytest.mark.parametrize("chunk_size,latency,threshold", NO_MISS_COMBOS)
def test_simulation_never_misses_with_latency_jitter(chunk_size, latency, threshold):
    # Latency varies between latency - 2 and latency ticks (>= 1): still no miss.
    jitter = min(2, latency - 1)
    for seed in range(3):
        dry, _, _ = simulate(chunk_size, latency, threshold, ticks=3000, jitter=jitter, seed=seed)
        assert dry == 0


@pytest.mark.parametrize("chunk_size,latency,threshold", [(10, 5, 3), (16, 10, 4), (50, 30, 20)])
def test_simulation_misses_when_latency_exceeds_threshold(chunk_size, latency, threshold):
    # Faster than a chunk (L < H) but the refill is requested too late: the old chunk
    # runs out L - threshold ticks before the new one lands, every cycle.
    dry, requests, _ = simulate(chunk_size, latency, threshold, ticks=3000)
    assert dry > 0
    assert dry == pytest.approx(requests * (latency - threshold), abs=latency)


@pytest.mark.parametrize("chunk_size,latency", [(10, 10), (10, 11), (16, 40)])
def test_too_slow_inference_is_detected_as_dry_ticks(chunk_size, latency):
    # L >= H: every chunk is entirely in the past when it arrives; nothing is ever
    # executed and every tick is reported dry.
    ticks = 2000
    dry, requests, first = simulate(chunk_size, latency, chunk_size // 2, ticks=ticks)
    assert first is None
    assert requests == pytest.approx(ticks / latency, abs=1)


def test_threads_add_and_pop_concurrently():
    # Smoke test for the lock: an inference thread adds chunks while the control
    # loop pops; values stay tick-aligned and nothing raises.
    q = ChunkQueue(chunk_size=8, dim=1, refill_threshold=4)
    stop = threading.Event()
    clock = {"tick": 0}
    errors = []

    def inference():
        try:
            last = -1
            while not stop.is_set():
                t0 = clock["tick"]
                if t0 != last:  # one chunk per observation, like a real policy
                    q.add_chunk(np.arange(t0, t0 + 8, dtype=float)[:, None], t0)
                    last = t0
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    th = threading.Thread(target=inference)
    th.start()
    try:
        for t in range(3000):
            clock["tick"] = t
            a = q.pop(t)
            if a is not None:
                assert a[0] == pytest.approx(t)
            q.remaining(t)
            q.needs_refill(t)
    finally:
        stop.set()
        th.join()
    assert not errors
    assert len(q._chunks) <= 9  # expired chunks are pruned (memory stays bounded)
