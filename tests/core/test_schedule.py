"""Solve cadence, EMA and the WSD multiplier, against hand-computed values."""

import math

import numpy as np
import pytest

from maxp_core import MaxPError, SolveSchedule, WSDSchedule, check_ema_decay, ema_update


def test_solve_schedule_steps() -> None:
    s = SolveSchedule(warmup_steps=3, solve_interval=2, stop_after=9)
    assert [t for t in range(1, 15) if s.should_solve(t)] == [5, 7, 9]
    assert [t for t in range(1, 4) if SolveSchedule().should_solve(t)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"solve_interval": 0}, "solve_interval must be an integer >= 1"),
        ({"solve_interval": 1.5}, "solve_interval must be an integer"),
        ({"stop_after": -2}, "stop_after must be an integer >= 0"),
    ],
)
def test_solve_schedule_rejects(kwargs, message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        SolveSchedule(**kwargs)


def test_ema_by_hand() -> None:
    state = ema_update(None, np.array([1.0, 2.0]), 0.9)
    state = ema_update(state, np.array([2.0, 0.0]), 0.9)
    np.testing.assert_allclose(state, [0.9 * 1 + 0.1 * 2, 0.9 * 2 + 0.1 * 0])
    kept = ema_update(state, np.array([np.inf, 5.0]), 0.5)
    np.testing.assert_allclose(kept, [state[0], 0.5 * state[1] + 2.5])
    with pytest.raises(MaxPError, match="non-finite entries at \\[1\\]"):
        ema_update(None, np.array([1.0, np.nan]), 0.5)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 2.0, "0.5", float("nan"), True])
def test_ema_decay_range(decay) -> None:
    with pytest.raises(MaxPError, match="alignment_ema"):
        check_ema_decay("alignment_ema", decay)


def test_wsd_cosine_by_hand() -> None:
    w = WSDSchedule(warmup_steps=4, stable_steps=6, decay_steps=10, decay_type="cosine", min_factor=0.1)
    expected = {
        0: 0.1,
        2: 0.1 + 0.9 * 2 / 4,
        4: 1.0,
        9: 1.0,
        10: 1.0,
        15: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)),
        20: 0.1,
        100: 0.1,
    }
    for step, value in expected.items():
        assert float(w(step)) == pytest.approx(value, rel=1e-6), step
    assert w.decay_start == 10 and w.in_decay(10) and not w.in_decay(9)
    np.testing.assert_allclose(w(np.array([0, 4, 20])), [0.1, 1.0, 0.1], rtol=1e-6)


def test_wsd_linear_and_off() -> None:
    w = WSDSchedule(warmup_steps=0, stable_steps=2, decay_steps=4, decay_type="linear")
    assert [float(w(t)) for t in range(8)] == pytest.approx([1, 1, 1, 0.75, 0.5, 0.25, 0, 0])
    off = WSDSchedule(decay_type="none")
    assert not off.enabled and float(off(123)) == 1.0 and off.decay_start is None


def test_wsd_without_decay_is_a_linear_warmup_then_one() -> None:
    w = WSDSchedule(warmup_steps=4, decay_type="none", min_factor=0.2)
    # min + (1 - min) * t / 4 up to step 4, then the base rate for good.
    expected = [0.2 + 0.8 * t / 4 for t in range(4)] + [1.0] * 4
    assert [float(w(t)) for t in range(8)] == pytest.approx(expected)
    assert w.decay_start is None and not w.in_decay(10**6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay_type": "step"}, "unknown decay_type 'step'"),
        ({"stable_steps": 5}, "needs both stable_steps and decay_steps"),
        ({"stable_steps": 5, "decay_steps": 0}, "decay_steps must be an integer >= 1"),
        ({"stable_steps": -1, "decay_steps": 3}, "stable_steps must be an integer >= 0"),
        ({"stable_steps": 1, "decay_steps": 3, "min_factor": 1.5}, "min_factor must be in \\[0, 1\\]"),
        (
            {"decay_type": "none", "decay_steps": 3},
            "decay_type='none' has no decay phase, but \\['decay_steps'\\]",
        ),
        ({"decay_type": "none", "min_factor": 0.1}, "set warmup_steps or a decay_type"),
    ],
)
def test_wsd_rejects(kwargs, message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        WSDSchedule(**kwargs)
