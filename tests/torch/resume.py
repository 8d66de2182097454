"""Straight against resumed: train 10 + 10 steps in one go, and 10, checkpoint, 10 in a fresh build."""

import io

import numpy as np
import torch


def straight_and_resumed(make, run, sample, steps: int = 10) -> tuple[tuple, tuple]:
    """``(model, param, optimizer)`` of a straight run and of a run resumed from a checkpoint.

    ``make()`` builds the three afresh; ``run(model, param, optimizer, steps, seed)`` trains,
    seeding torch's global generator first (dropout draws from it, and a resumed run restores it);
    ``sample`` is what :meth:`capture_initial` records.
    """
    straight = make()
    straight[1].capture_initial(sample)
    run(*straight, steps, seed=1)
    run(*straight, steps, seed=2)
    first = make()
    first[1].capture_initial(sample)
    run(*first, steps, seed=1)
    model, param, optimizer = first
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "param": param.state_dict()}, buffer
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    resumed = make()
    resumed[0].load_state_dict(checkpoint["model"])
    resumed[2].load_state_dict(checkpoint["opt"])
    resumed[1].load_state_dict(checkpoint["param"])
    run(*resumed, steps, seed=2)
    return straight, resumed


def assert_same_run(straight: tuple, resumed: tuple) -> None:
    """Same weights, exponents, alignments, rates and counters, to the last bit."""
    for (name, a), b in zip(straight[0].named_parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(straight[1].c, resumed[1].c)
    np.testing.assert_array_equal(straight[1].alignment, resumed[1].alignment)
    assert [g["lr"] for g in straight[2].param_groups] == [g["lr"] for g in resumed[2].param_groups]
    for key in ("solves", "failures", "missing"):
        assert getattr(straight[1], key) == getattr(resumed[1], key)
