"""The current published release's coordinate check: ``diagnose_axis`` by traced operation.

:func:`maxp_torch.diagnose_axis` takes this form when called with the published keywords
(``make_model_fn=``, ``make_input_fn=``, ``n_steps=``, ``n_seeds=``, ``train_step_fn=``):
every traced operation (:func:`~maxp_torch.published.classify` at the two smallest widths, parameter
rows left out) is measured (:func:`~maxp_torch.published.measure_activations`) before each of
``n_steps`` training steps, at each width and seed, and the result is the published
``(ops, affected, act_stats)``: ``act_stats[op, step, width, seed]``, every op counted as
affected. ``print_axis`` and ``plot_axis`` take that result too; :func:`op_label` names an op
as the published one does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maxp_core import MaxPError, validate
from maxp_torch.compat.ops import ClassifiedOp, classify, measure_activations
from maxp_torch.module import ParametrizedModule

#: The keywords only the published form takes.
PUBLISHED_KEYWORDS = ("make_model_fn", "make_input_fn", "n_steps", "n_seeds", "train_step_fn")

MakeModel = Callable[[int], tuple[nn.Module, Any]]


def op_label(op: ClassifiedOp) -> str:
    """``#<index> <name>``: the parameter's name without ``.weight``, else the module's path,
    else ``op<index>``; an op outside any parameter adds ``@ <file:line>``.

    Examples:
      >>> op = ClassifiedOp(3, "linear", "hidden", True, "blocks.0.fc.weight", "blocks.0.fc", "m.py:9",
      ...                   [], [], (), ())
      >>> op_label(op)
      '#3 blocks.0.fc'
    """
    name = (
        op.param_name.replace(".weight", "")
        if op.param_name
        else op.module_path
        if op.module_path
        else f"op{op.index}"
    )
    where = f" @ {op.source_loc}" if op.source_loc and not op.parametrized else ""
    return f"#{op.index} {name}{where}"


def diagnose_ops(
    make_model_fn: MakeModel,
    make_input_fn: Callable[[int], Any],
    widths: Sequence[int],
    n_steps: int = 10,
    n_seeds: int = 3,
    train_step_fn: Callable[[nn.Module, int], None] | None = None,
) -> tuple[list[ClassifiedOp], list[int], np.ndarray]:
    """The published ``diagnose_axis``: see the module docstring.

    ``make_model_fn(width)`` returns ``(model, param_groups)`` (``None`` groups train every
    parameter at 3e-4); without ``train_step_fn`` each step is AdamW with cross-entropy on one
    fixed batch of 16 sequences of 32 tokens, which needs the model's ``tok_emb`` (an
    ``nn.Embedding`` or a ``ParametrizedModule`` around one) for the vocabulary size. Each
    model is built after ``torch.manual_seed(1000 * seed + width)``, and each measurement after
    ``torch.manual_seed(100000 * seed + step)``, as published.
    """
    if len(widths) < 2:
        raise MaxPError(f"diagnose_axis needs at least two widths to classify the ops, got {list(widths)}")
    n_steps = validate.integer(n_steps, "diagnose_axis: n_steps", 1)
    n_seeds = validate.integer(n_seeds, "diagnose_axis: n_seeds", 1)
    if train_step_fn is not None and not callable(train_step_fn):
        raise MaxPError(
            "diagnose_axis: train_step_fn must be a function (model, step) -> None, got "
            f"{type(train_step_fn).__name__}"
        )
    small, _ = make_model_fn(widths[0])
    large, _ = make_model_fn(widths[1])
    ops = [
        op
        for op in classify(small, large, make_input_fn(widths[0]), make_input_fn(widths[1]))
        if op.op != "elementwise"
    ]
    stats = np.zeros((len(ops), n_steps, len(widths), n_seeds))
    for seed in range(n_seeds):
        for w, width in enumerate(widths):
            torch.manual_seed(seed * 1000 + width)
            model, groups = make_model_fn(width)
            step_fn = train_step_fn or default_train_step(model, groups)
            for step in range(n_steps):
                torch.manual_seed(seed * 100000 + step)
                measured = measure_activations(model, make_input_fn(width))
                stats[:, step, w, seed] = [measured[op.index] for op in ops]
                step_fn(model, step)
    return ops, list(range(len(ops))), stats


def default_train_step(model: nn.Module, param_groups: Any) -> Callable[[nn.Module, int], None]:
    """One AdamW step with cross-entropy on a fixed batch of the model's vocabulary."""
    embedding = getattr(model, "tok_emb", None)
    if isinstance(embedding, ParametrizedModule):
        embedding = embedding.inner
    if not isinstance(embedding, nn.Embedding):
        raise MaxPError(
            f"diagnose_axis without train_step_fn trains on tokens and reads the vocabulary from "
            f"model.tok_emb, which {type(model).__name__} does not have as an nn.Embedding; pass "
            "train_step_fn=lambda model, step: ... (forward, backward, optimizer step)"
        )
    vocab = embedding.num_embeddings
    if param_groups is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    else:
        optimizer = torch.optim.AdamW(param_groups)
    tokens = torch.randint(0, vocab, (16, 32))
    targets = torch.randint(0, vocab, (16, 32))

    def step(model: nn.Module, step_index: int) -> None:
        logits = model(tokens)
        nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def print_ops(
    axis: str, ops: list[ClassifiedOp], affected: list[int], act_stats: np.ndarray, widths: Sequence[int]
) -> None:
    """One row per listed op: index, kind, role, parametrized, label and its first-step mean
    activation at each width (over seeds)."""
    print(f"\n=== Axis: {axis} ===")
    print(f"  {len(affected)} of {len(ops)} traced ops:\n")
    columns = "".join(f"{axis + '=' + str(w):>14}" for w in widths)
    print(f"  {'idx':<4} {'op':<10} {'type':<10} {'p?':<4} {'label':<45}{columns}")
    for i in affected:
        op = ops[i]
        values = "".join(f"{act_stats[i, 0, w].mean():>14.4f}" for w in range(len(widths)))
        flag = "Y" if op.parametrized else "N"
        print(f"  {op.index:<4} {op.op:<10} {op.layer_type:<10} {flag:<4} {op_label(op):<45}{values}")


def plot_ops(
    axis: str,
    ops: list[ClassifiedOp],
    affected: list[int],
    act_stats: np.ndarray,
    widths: Sequence[int],
    filename: str | Path,
    plot_every: int = 1,
) -> Path | None:
    """One panel per listed op: its mean activation against width, one line per plotted step
    (every ``plot_every``-th), with the seeds' standard error. ``None`` when no op is listed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not affected:
        print(f"  no ops listed for axis {axis!r}: nothing to plot")
        return None
    steps = range(0, act_stats.shape[1], max(1, int(plot_every)))
    columns = min(4, len(affected))
    rows = -(-len(affected) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), squeeze=False)
    colors = plt.get_cmap("coolwarm")
    for panel, i in enumerate(affected):
        ax = axes[divmod(panel, columns)]
        for step in steps:
            runs = act_stats[i, step]  # (widths, seeds)
            mean, spread = runs.mean(1), runs.std(1) / np.sqrt(runs.shape[1])
            color = colors(step / max(1, act_stats.shape[1] - 1))
            ax.plot(widths, mean, marker=".", color=color, label=str(step) if panel == 0 else None)
            ax.fill_between(widths, mean - spread, mean + spread, color=color, alpha=0.3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(op_label(ops[i]), fontsize=7, family="monospace")
        ax.set_xlabel(axis)
    for panel in range(len(affected), rows * columns):
        axes[divmod(panel, columns)].set_visible(False)
    axes[0, 0].legend(title="step", fontsize=5)
    fig.tight_layout()
    path = Path(filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"  saved {path}")
    return path
