"""One sweep run in PyTorch (AdamW without weight decay), for :mod:`benchmarks.sweep`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.sweep_tasks import Task, diverged, run_record
from examples.torch_models import GPT
from maxp_core.depth import DepthScaling
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
) -> dict[str, object]:
    """Train one configuration for ``steps`` steps (stopping early on divergence); ``depth`` is
    a depth rule for the muP methods (:mod:`maxp_core.depth`)."""
    torch.manual_seed(seed)
    model = build_model(task, method, width).to(device)
    probe = torch.as_tensor(task.probe, device=device)
    param = None
    if method == "sp":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    else:
        dynamic = method == "maxp"
        param = Parametrization(
            model,
            lr_prefactor=lr,
            alignment="no" if method == "mup-no" else "full",
            sample_input=probe if task.name == "chars" else None,
            warmup_steps=MAXP_WARMUP if dynamic else 10**9,
            solve_interval=MAXP_INTERVAL,
            seed=seed,
            depth=depth,
        )
        optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
        param.capture_initial(probe)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    stopped = False
    for _ in range(steps):
        x, y = (torch.as_tensor(v, device=device) for v in task.sample(rng))
        optimizer.zero_grad()
        loss = _loss(model(x), y)
        losses.append(loss.item())
        if diverged(losses[-1], losses[0]):
            stopped = True
            break
        loss.backward()
        optimizer.step()
        if param is not None:
            param.step(x, optimizer)
    with torch.no_grad():
        x_test, y_test = (torch.as_tensor(v, device=device) for v in task.held_out)
        test_loss = float(_loss(model(x_test), y_test))
    settings = {"framework": "torch", "task": task.name, "method": method, "width": width, "lr": lr}
    return run_record({**settings, "seed": seed, "device": str(device)}, losses, stopped, test_loss)
