"""Sweep the learning rate of your own PyTorch model: a maxP arm and a muP arm, three widths.

Run ``python -m examples.sweep_torch --out runs/sweep-torch`` (``--lrs``, ``--widths``,
``--seeds``, ``--steps``, ``--jobs``, ``--backend ray``), then read
``runs/sweep-torch/sweep-report.md``. The training function below is what you write for
your own model: it takes a run's config and yields one record per step, with maxP's
per-layer rates and alignments in some of them for the report's trajectory plots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from examples.common import digits_split, sweep_main
from maxp_torch import Parametrization, ParametrizedModule

LOG_EVERY = 10


def mlp(width: int, depth: int = 4) -> nn.Sequential:
    sizes = [64] + [width] * (depth - 1) + [10]
    roles = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i, role in enumerate(roles):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        layers += [ParametrizedModule(linear, width_dim=width, layer_type=role), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train(config: dict[str, Any]) -> Iterator[dict[str, float]]:
    """One run: ``config`` holds ``lr``, ``width``, ``method`` (``maxp`` or ``mup``), ``seed``, ``steps``."""
    torch.manual_seed(config["seed"])
    x_train, _, y_train, _ = digits_split()
    x, y = torch.as_tensor(x_train), torch.as_tensor(y_train, dtype=torch.long)
    model = mlp(config["width"])
    dynamic = config["method"] == "maxp"
    param = Parametrization(
        model,
        lr_prefactor=config["lr"],
        warmup_steps=20 if dynamic else 10**9,  # muP: the LP's rates for full alignment, fixed
        solve_interval=10,
        seed=config["seed"],
    )
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    param.capture_initial(x[:64])
    rng = np.random.default_rng(config["seed"])
    for step in range(config["steps"]):
        idx = torch.as_tensor(rng.integers(0, len(x), 128))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        param.step(x[idx], optimizer)
        record: dict[str, float] = {"step": step, "loss": loss.item()}
        if dynamic and (step % LOG_EVERY == 0 or step == config["steps"] - 1):
            record.update(param.metrics())
        yield record


if __name__ == "__main__":
    sweep_main("examples.sweep_torch", __doc__)
