"""The sweep's tasks, free of any framework: data, batches, a fixed probe and a held-out set.

* ``digits``: scikit-learn's 8x8 digits, an MLP of depth 4 (``width`` hidden units).
* ``chars``: next-character prediction on the Python standard library's own sources
  (:func:`examples.common.stdlib_text`), a 2-block GPT of width ``d = width``.

Every batch comes from a ``numpy`` generator seeded by the run's seed, so the PyTorch and
the JAX sweeps see the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from examples.common import CHAR_VOCAB, char_split, char_windows, digits_split
from maxp_core.lp import DEFAULT_TIE_RULE

TASKS = ("digits", "chars")


@dataclass(frozen=True)
class Task:
    """What a training run of one task needs; ``x`` arrays are model inputs, ``y`` class labels."""

    name: str
    batch: int
    classes: int
    description: str
    sample: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]  # one training batch
    probe: np.ndarray  # the fixed rows alignments are measured on
    held_out: tuple[np.ndarray, np.ndarray]
    depth: int = 4  # digits MLP layers
    blocks: int = 2  # chars GPT blocks
    context: int = 64  # chars window length


def load_task(name: str) -> Task:
    """Build the task ``name`` (one of :data:`TASKS`) with its data loaded.

    Example:
      >>> task = load_task("chars")
      >>> x, y = task.sample(np.random.default_rng(0))
      >>> x.shape, y.shape, task.classes
      ((32, 64), (32, 64), 128)
    """
    if name == "digits":
        x_train, x_test, y_train, y_test = digits_split()
        labels, batch = y_train.astype(np.int64), 128

        def digits_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            idx = rng.integers(0, len(x_train), batch)
            return x_train[idx], labels[idx]

        return Task(
            name="digits",
            batch=batch,
            classes=10,
            description="digits MLP (depth 4)",
            sample=digits_batch,
            probe=x_train[:64],
            held_out=(x_test, y_test.astype(np.int64)),
        )
    if name == "chars":
        train, validation = char_split()
        context, batch = 64, 32
        probe_starts = np.linspace(0, len(train) - context - 2, 8).astype(np.int64)
        held_starts = np.linspace(0, len(validation) - context - 2, 64).astype(np.int64)

        def chars_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return char_windows(train, rng.integers(0, len(train) - context - 1, batch), context)

        return Task(
            name="chars",
            batch=batch,
            classes=CHAR_VOCAB,
            description=f"character-level GPT (2 blocks, context {context}) on the standard library",
            context=context,
            sample=chars_batch,
            probe=char_windows(train, probe_starts, context)[0],
            held_out=char_windows(validation, held_starts, context),
        )
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")


DIVERGED_FACTOR = 3.0
FINAL_WINDOW = 20
#: Dynamic maxP with a named tie rule of the LP (:mod:`maxp_core.lp`); ``maxp`` takes the default.
TIE_RULE_METHODS = {"maxp-preset": "preset", "maxp-later": "later"}
#: Methods whose alignments are measured during training (``mup-no`` without using them).
MEASURED = ("maxp", "mup-no", *TIE_RULE_METHODS)


def tie_rule(method: str) -> str:
    """The LP's tie rule a method trains with.

    Example:
      >>> tie_rule("maxp-later"), tie_rule("maxp") == DEFAULT_TIE_RULE
      ('later', True)
    """
    return TIE_RULE_METHODS.get(method, DEFAULT_TIE_RULE)


#: Steps between the per-step metrics records kept in a run's file.
TRAJECTORY_EVERY = 50


def warmup_factor(step: int, warmup: int) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): linear over ``warmup`` steps.

    Example:
      >>> [warmup_factor(t, 4) for t in range(5)], warmup_factor(0, 0)
      ([0.25, 0.5, 0.75, 1.0, 1.0], 1.0)
    """
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def diverged(loss: float, first: float) -> bool:
    """A run has diverged when its loss is NaN or inf or above ``DIVERGED_FACTOR`` x its start.

    Example:
      >>> diverged(float("nan"), 2.0), diverged(7.0, 2.0), diverged(5.0, 2.0)
      (True, True, False)
    """
    return not np.isfinite(loss) or loss > DIVERGED_FACTOR * first


def run_record(
    run: dict[str, object], losses: list[float], stopped: bool, test_loss: float
) -> dict[str, object]:
    """The metrics file of one run: ``run``'s settings, the loss curve and the outcome.

    ``final_train_loss`` is the mean of the last ``FINAL_WINDOW`` losses; both it and
    ``test_loss`` are ``inf`` for a diverged run.
    """
    final = float(np.mean(losses[-FINAL_WINDOW:])) if losses and not stopped else float("inf")
    return {
        **run,
        "steps": len(losses),
        "diverged": stopped,
        "final_train_loss": final,
        "test_loss": float(test_loss) if np.isfinite(test_loss) and not stopped else float("inf"),
        "losses": [float(v) for v in losses],
    }
