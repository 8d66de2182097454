"""AdamW and SGD that update all of maxP's per-layer param groups in one multi-tensor pass.

maxP gives each layer its own param group, because each layer has its own learning rate.
``torch.optim.AdamW`` and ``SGD`` run their update once per group: with one group per
layer, the kernels launched on a GPU (and the Python work on any device) grow with the
number of layers, whatever ``foreach`` or ``fused`` says. The classes here are drop-in
subclasses: the groups stay as they are (``Parametrization`` writes each group's rate,
schedulers and ``state_dict`` work unchanged), but ``step`` gathers the tensors of all
groups that share the other hyperparameters and updates them together with ``torch._foreach``
operations that take one learning rate per tensor. The numbers are those of the torch
class over the same groups (``tests/torch/test_optim.py``).

Examples:
  >>> import torch
  >>> from torch import nn
  >>> from maxp_torch import Parametrization, ParametrizedModule
  >>> model = nn.Sequential(
  ...     ParametrizedModule(nn.Linear(8, 32), width_dim=32, layer_type="embedding"),
  ...     ParametrizedModule(nn.Linear(32, 32), width_dim=32, layer_type="hidden"),
  ...     ParametrizedModule(nn.Linear(32, 2), width_dim=32, layer_type="readout"))
  >>> param = Parametrization(model, lr_prefactor=0.01)
  >>> optimizer = AdamW(param.param_groups, weight_decay=0.1)
  >>> model(torch.ones(4, 8)).sum().backward()
  >>> optimizer.step()
  >>> len(optimizer.param_groups), len(optimizer.state)
  (3, 6)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from maxp_core import MaxPError

#: Group settings the multi-tensor step does not implement: a group with any of them set
#: runs torch's own per-group step.
_ADAMW_UNSUPPORTED = ("amsgrad", "maximize", "capturable", "differentiable", "fused")
_SGD_UNSUPPORTED = ("maximize", "differentiable", "fused")


def _scalar_dtype() -> torch.dtype:
    """The dtype torch's optimizers keep their step counts in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _plain(group: dict[str, Any], unsupported: tuple[str, ...]) -> bool:
    return not any(group.get(key) for key in unsupported) and not isinstance(group["lr"], torch.Tensor)


def _with_grad(group: dict[str, Any], where: str) -> list[torch.Tensor]:
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse or torch.is_complex(p):  # type: ignore[union-attr]
            raise MaxPError(
                f"{where}: parameter of shape {tuple(p.shape)} in group {group.get('layer_name', '?')!r} has "
                "a sparse gradient or complex values; use torch.optim for it"
            )
    return params


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose step updates every group in one multi-tensor pass.

    Groups are bucketed by ``(betas, eps, weight_decay, device, dtype)``; each bucket is one
    set of ``torch._foreach`` operations with per-tensor learning rates. Groups with
    ``amsgrad``, ``maximize``, ``capturable``, ``differentiable``, ``fused`` or a tensor
    learning rate take torch's own step. Arguments are those of ``torch.optim.AdamW``.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW update of every parameter with a gradient; ``closure`` re-evaluates the loss."""
        settings = ("betas", "eps", "weight_decay")
        return _one_pass(
            self, closure, _ADAMW_UNSUPPORTED, settings, _adam_state, _adamw_bucket, super().step
        )


def _adam_state(state: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """A parameter's AdamW state, created as torch creates it on the first step."""
    if not state:
        state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _adamw_bucket(
    members: list[tuple[torch.Tensor, dict[str, Any], float]],
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """AdamW's update (torch's arithmetic, operation by operation) on one bucket of tensors."""
    beta1, beta2 = betas
    params = [p for p, _, _ in members]
    grads = [p.grad for p in params]
    exp_avgs = [s["exp_avg"] for _, s, _ in members]
    exp_avg_sqs = [s["exp_avg_sq"] for _, s, _ in members]
    steps = [s["step"] for _, s, _ in members]
    lrs = [lr for _, _, lr in members]
    torch._foreach_add_(steps, 1)
    if weight_decay != 0:
        torch._foreach_mul_(params, [1 - lr * weight_decay for lr in lrs])
    present = cast(list[torch.Tensor], grads)  # every member has a gradient (_with_grad)
    torch._foreach_lerp_(exp_avgs, present, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, present, present, 1 - beta2)
    counts = [float(s) for s in steps]  # host tensors: no device synchronisation
    step_sizes = [(lr / (1 - beta1**n)) * -1 for lr, n in zip(lrs, counts, strict=True)]
    bias_correction2_sqrt = [(1 - beta2**n) ** 0.5 for n in counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose step updates every group in one multi-tensor pass.

    Groups are bucketed by ``(momentum, dampening, nesterov, weight_decay, device, dtype)``;
    the last operation (``param -= lr * direction``) runs once per distinct learning rate
    of a bucket, since torch's foreach addition takes one factor per call. Groups with
    ``maximize``, ``differentiable``, ``fused`` or a tensor learning rate take torch's own step.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One SGD update of every parameter with a gradient; ``closure`` re-evaluates the loss."""
        settings = ("momentum", "dampening", "nesterov", "weight_decay")
        return _one_pass(
            self, closure, _SGD_UNSUPPORTED, settings, lambda state, _: state, _sgd_bucket, super().step
        )


def _sgd_bucket(
    members: list[tuple[torch.Tensor, dict[str, Any], float]],
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """SGD's update (torch's arithmetic) on one bucket of tensors."""
    params = [p for p, _, _ in members]
    grads: list[torch.Tensor] | tuple[torch.Tensor, ...] = [p.grad for p in params]  # type: ignore[misc]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        fresh = [i for i, (_, s, _) in enumerate(members) if s.get("momentum_buffer") is None]
        for i in fresh:
            members[i][1]["momentum_buffer"] = torch.clone(grads[i]).detach()
        old = [i for i in range(len(members)) if i not in set(fresh)]
        if old:
            bufs = [members[i][1]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, [grads[i] for i in old], alpha=1 - dampening)
        bufs = [s["momentum_buffer"] for _, s, _ in members]
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    by_rate: dict[float, list[int]] = {}
    for i, (_, _, lr) in enumerate(members):
        by_rate.setdefault(lr, []).append(i)
    for lr, indices in by_rate.items():
        torch._foreach_add_([params[i] for i in indices], [grads[i] for i in indices], alpha=-lr)


def _one_pass(
    optimizer: torch.optim.Optimizer,
    closure: Callable[[], float] | None,
    unsupported: tuple[str, ...],
    settings: tuple[str, ...],
    prepare: Callable[[dict[str, Any], torch.Tensor], dict[str, Any]],
    update: Callable[..., None],
    torch_step: Callable[[], Any],
) -> float | None:
    """Bucket the parameters of all plain groups by ``settings``, device and dtype, run
    ``update(members, *settings)`` once per bucket and torch's own step on the other groups."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    buckets: dict[tuple[tuple[Any, ...], Any, Any], list[tuple[torch.Tensor, dict[str, Any], float]]] = {}
    fallback = []
    where = f"maxp_torch.optim.{type(optimizer).__name__}"
    for group in optimizer.param_groups:
        if not _plain(group, unsupported):
            fallback.append(group)
            continue
        values = tuple(tuple(v) if isinstance(v, list) else v for v in (group[name] for name in settings))
        for p in _with_grad(group, where):
            member = (p, prepare(optimizer.state[p], p), float(group["lr"]))
            buckets.setdefault((values, p.device, p.dtype), []).append(member)
    for (values, _, _), members in buckets.items():
        update(members, *values)
    if fallback:
        _step_groups(optimizer, fallback, torch_step)
    return loss


def _step_groups(
    optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]], step: Callable[[], Any]
) -> None:
    """torch's own ``step`` on ``groups`` only (the others are hidden from it meanwhile)."""
    everything = optimizer.param_groups
    optimizer.param_groups = groups
    try:
        step()
    finally:
        optimizer.param_groups = everything
