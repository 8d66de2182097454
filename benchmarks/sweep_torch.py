"""One sweep run in PyTorch (AdamW without weight decay), for :mod:`benchmarks.sweep`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.sweep_tasks import (
    MEASURED,
    TRAJECTORY_EVERY,
    Task,
    diverged,
    run_record,
    tie_rule,
    warmup_factor,
)
from examples.torch_models import GPT
from maxp_core.depth import DepthScaling
from maxp_core.tables import AlignmentTable
from maxp_torch import Parametrization, ParametrizedModule

MAXP_WARMUP, MAXP_INTERVAL = 20, 10


def build_model(task: Task, method: str, width: int) -> nn.Module:
    """The task's network; ``sp`` gets plain layers with PyTorch's initialisation."""
    parametrized = method != "sp"
    if task.name == "chars":
        return GPT(
            d=width, blocks=task.blocks, vocab=task.classes, ctx=task.context, parametrized=parametrized
        )
    sizes = [task.probe.shape[1]] + [width] * (task.depth - 1) + [task.classes]
    roles = ["embedding"] + ["hidden"] * (task.depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i, role in enumerate(roles):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(
            ParametrizedModule(linear, width_dim=width, layer_type=role) if parametrized else linear
        )
        if i < task.depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(
    task: Task,
    method: str,
    width: int,
    lr: float,
    seed: int,
    steps: int,
    device: str = "cpu",
    depth: DepthScaling | None = None,
    table: AlignmentTable | None = None,
    warmup: int = 0,
    base_width: int | None = None,
) -> dict[str, object]:
    """Train one configuration for ``steps`` steps (stopping early on divergence).

    ``depth`` is a depth rule for the muP methods (:mod:`maxp_core.depth`); ``table`` the
    alignment table ``maxp-meas`` trains with; ``warmup`` ramps the rate linearly over its
    first steps; ``base_width`` the width at which the muP methods are the ``sp`` model
    (:mod:`maxp_core.base_width`). ``maxp`` and ``mup-no`` (measured without changing its rates) keep their
    per-step metrics every :data:`TRAJECTORY_EVERY` steps in the record.
    """
    if method == "maxp-meas" and table is None:
        raise ValueError("maxp-meas trains with a measured alignment table; pass table=")
    torch.manual_seed(seed)
    model = build_model(task, method, width).to(device)
    probe = torch.as_tensor(task.probe, device=device)
    param = None
    if method == "sp":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr * warmup_factor(0, warmup), weight_decay=0.0)
    else:
        measured = method in MEASURED
        param = Parametrization(
            model,
            lr_prefactor=lr * warmup_factor(0, warmup),
            alignment="no" if method in ("mup-no", "maxp-meas") else "full",
            alignment_overrides=table if method == "maxp-meas" else None,
            sample_input=probe if task.name == "chars" else None,
            warmup_steps=MAXP_WARMUP if measured else 10**9,
            solve_interval=MAXP_INTERVAL,
            seed=seed,
            depth=depth,
            measure_only=method == "mup-no",
            tie_rule=tie_rule(method),
            base_width=base_width,
        )
        optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
        param.capture_initial(probe)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    trajectory: list[dict[str, float]] = []
    stopped = False
    for t in range(steps):
        x, y = (torch.as_tensor(v, device=device) for v in task.sample(rng))
        optimizer.zero_grad()
        loss = _loss(model(x), y)
        losses.append(loss.item())
        if diverged(losses[-1], losses[0]):
            stopped = True
            break
        loss.backward()
        optimizer.step()
        rate = lr * warmup_factor(t + 1, warmup)
        if param is None:
            for group in optimizer.param_groups:
                group["lr"] = rate
            continue
        param.lr_prefactor = rate
        param.step(x, optimizer)
        if method in MEASURED and ((t + 1) % TRAJECTORY_EVERY == 0 or t + 1 == steps):
            logged = {k: float(f"{v:.6g}") for k, v in param.metrics().items()}
            trajectory.append(logged | {"loss": losses[-1]})
    with torch.no_grad():
        x_test, y_test = (torch.as_tensor(v, device=device) for v in task.held_out)
        test_loss = float(_loss(model(x_test), y_test))
    settings = {"framework": "torch", "task": task.name, "method": method, "width": width, "lr": lr}
    record = run_record({**settings, "seed": seed, "device": str(device)}, losses, stopped, test_loss)
    record["warmup"] = warmup
    record["base_width"] = base_width
    if trajectory and param is not None:
        record["layers"] = {param.names[k]: param.modules[k].layer_type for k in param.weighted}
        record["metrics"] = trajectory
    return record
