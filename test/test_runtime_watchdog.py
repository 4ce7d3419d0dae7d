"""Tests for vla_ros.runtime.watchdog (clock passed in, no sleeps)."""

import threading

import pytest

from vla_ros.runtime.watchdog import Watchdog


def make():
    return Watchdog({"image": 0.25, "joint_states": 0.0625, "inference": 1.0})  # exact binary fractions


def test_never_fed_is_stale():
    w = make()
    assert w.stale(0.0) == ["image", "joint_states", "inference"]  # configuration order
    assert w.age("image", 0.0) is None


def test_fresh_then_stale_at_timeout_boundary():
    w = make()
    w.feed("image", 10.0)
    w.feed("joint_states", 10.0)
    w.feed("inference", 10.0)
    assert w.stale(10.0) == []
    assert w.stale(10.04) == []
    # joint_states: 10.0625 - 10.0 = 0.0625 <= 0.0625 is still fresh; 0.07 > 0.0625 is stale.
    assert w.stale(10.0625) == []
    assert w.stale(10.07) == ["joint_states"]
    # image goes stale after 0.25 s, inference after 1 s.
    assert w.stale(10.25) == ["joint_states"]
    assert w.stale(10.3) == ["image", "joint_states"]
    assert w.stale(11.5) == ["image", "joint_states", "inference"]
    assert w.age("image", 10.3) == pytest.approx(0.3)


def test_feeding_again_refreshes_and_out_of_order_is_ignored():
    w = Watchdog({"image": 0.2})
    w.feed("image", 5.0)
    w.feed("image", 5.3)
    w.feed("image", 5.1)  # late message: must not move the record backwards
    assert w.stale(5.45) == []
    assert w.stale(5.55) == ["image"]


def test_clock_jump_backwards_is_stale():
    w = Watchdog({"image": 0.2})
    w.feed("image", 100.0)
    assert w.stale(99.9) == []  # small skew between machines is fine
    assert w.stale(1.0) == ["image"]  # simulator restarted: cannot trust it


def test_non_finite_inputs():
    w = Watchdog({"image": 0.2})
    w.feed("image", float("nan"))
    assert w.stale(0.0) == ["image"]
    w.feed("image", 1.0)
    assert w.stale(float("nan")) == ["image"]


def test_unknown_name_and_bad_timeouts():
    w = make()
    with pytest.raises(KeyError, match="imgae"):
        w.feed("imgae", 0.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            Watchdog({"x": bad})


def test_reset_forgets_every_arrival():
    w = make()
    for name in w.names:
        w.feed(name, 1.0)
    assert w.stale(1.0) == []
    w.reset()
    assert w.stale(1.0) == ["image", "joint_states", "inference"]


def test_concurrent_feeds():
    w = Watchdog({f"in{i}": 1.0 for i in range(4)})

    def feeder(name):
        for k in range(2000):
            w.feed(name, k * 0.001)

    threads = [threading.Thread(target=feeder, args=(n,)) for n in w.names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.stale(1.999) == []
    assert all(w.age(n, 2.0) == pytest.approx(0.001) for n in w.names)
