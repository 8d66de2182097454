"""The sweep's two tasks as training functions for :mod:`maxp_core.sweep`, as a user's would be.

``python -m maxp_core sweep run benchmarks.sweep_train:train --lr 3e-3 1e-2 3e-2 --width 64 256
--method sp mup-full maxp --seed 0 1 --set task=digits --set framework=torch --set steps=300
--out runs/digits`` trains the digits MLP (``task=chars``: the character GPT; ``framework=jax``:
the flax twins) with :mod:`benchmarks.sweep`'s trainers, on any backend of
:func:`maxp_core.sweep.run_sweep`. Config keys: ``lr``, ``width``, ``method`` (every method of
:mod:`benchmarks.sweep` but ``maxp-meas``, which needs a measured table), ``seed`` and
optionally ``task``, ``framework``, ``steps``, ``warmup``, ``device``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.sweep import make_trainer
from benchmarks.sweep_tasks import load_task


def train(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One run: a record per step (its loss), maxP's metrics where the trainer logged them, and
    the held-out loss in the last record."""
    if config["method"] == "maxp-meas":
        raise ValueError("maxp-meas trains with a table measured by another arm: use benchmarks.sweep")
    trainer = make_trainer(
        load_task(config.get("task", "digits")),
        config.get("framework", "torch"),
        config["method"],
        int(config["width"]),
        device=config.get("device", "auto"),
        warmup=int(config.get("warmup", 0)),
    )
    result = trainer(float(config["lr"]), int(config.get("seed", 0)), int(config.get("steps", 300)))
    records: list[dict[str, Any]] = [{"step": t, "loss": loss} for t, loss in enumerate(result["losses"])]
    for logged in result.get("metrics", []):  # after optimizer step maxp/step, the loss of step maxp/step - 1
        step = int(logged["maxp/step"]) - 1
        if 0 <= step < len(records):
            records[step].update({k: v for k, v in logged.items() if k.startswith("maxp/")})
    if records and result.get("test_loss") is not None:
        records[-1]["test_loss"] = result["test_loss"]
    return records
