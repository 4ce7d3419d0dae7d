"""Emulated inference latency (model.emulated_latency, vla-ros serve --emulated-latency): the delay is
added in the policy server process, after the model ran, and never in the caller's interpreter."""
import threading
import time

import numpy as np
import pytest

from test_runtime_policy_server import DEADLINE, Recorder, load_cfg, observation
from vla_ros.runtime.emulated_latency import EmulatedLatency
from vla_ros.runtime.policy_client import PolicyProcess
from vla_ros.runtime.policy_loader import PolicyLoadError


def test_fixed_latency_is_the_same_every_time():
    e = EmulatedLatency(0.25)
    assert [e.sample() for _ in range(5)] == [0.25] * 5
    assert e.describe() == "fixed 0.25 s"


def test_lognormal_latency_has_the_given_median_and_p99():
    e = EmulatedLatency(0.5, p99=2.0, seed=7)
    s = np.array([e.sample() for _ in range(20000)])
    assert np.median(s) == pytest.approx(0.5, rel=0.03)
    assert np.quantile(s, 0.99) == pytest.approx(2.0, rel=0.08)
    assert s.min() > 0
    again = EmulatedLatency(0.5, p99=2.0, seed=7)
    assert [again.sample() for _ in range(3)] == list(s[:3])  # seeded: a benchmark row is reproducible


@pytest.mark.parametrize("args, text", [((-1.0,), "finite number of seconds >= 0"),
                                        ((float("nan"),), "finite number"),
                                        ((0.5, 0.2), "must be at least the latency"),
                                        ((0.0, 1.0), "needs a latency")])
def test_bad_emulated_latency_is_refused_with_one_line(args, text):
    with pytest.raises(ValueError, match=text):
        EmulatedLatency(*args)


def test_the_delay_is_added_in_the_policy_server_process_never_in_the_callers_interpreter():
    rec = Recorder()
    proc = PolicyProcess(load_cfg(emulated_latency={"latency": 0.4, "p99": 0.0, "seed": 0}),
                         rec.on_result, rec.on_failure, rec.log)
    meta = proc.start()
    try:
        assert meta["emulated_latency"] == "fixed 0.4 s"
        # A loop in this process, as the control loop is: it must keep its 10 ms period while the
        # server holds the answer back.
        gaps, stop = [], threading.Event()

        def loop():
            last = time.perf_counter()
            while not stop.is_set():
                time.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        t = threading.Thread(target=loop)
        t.start()
        img = np.zeros((96, 96, 3), np.uint8)
        for _ in range(3):
            obs = observation([img])
            sent = time.perf_counter()
            assert proc.submit(obs)
            submitted = time.perf_counter() - sent
            rec.answer(obs)
            waited = time.perf_counter() - sent
            assert submitted < 0.2, "submit waited for the emulated latency"
            assert 0.4 <= waited < DEADLINE
        stop.set()
        t.join()
        assert max(gaps) < 0.2, f"the caller's loop stalled {max(gaps):.3f} s"
        assert min(proc.model_ms) < 400  # the model's own time, reported apart from the emulated delay
    finally:
        proc.close()


def test_a_bad_emulated_latency_fails_the_load_with_its_reason():
    rec = Recorder()
    proc = PolicyProcess(load_cfg(emulated_latency={"latency": 1.0, "p99": 0.5}), rec.on_result, rec.on_failure,
                         rec.log)
    with pytest.raises(PolicyLoadError, match="must be at least the latency"):
        proc.start()
