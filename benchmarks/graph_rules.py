"""Coordinate checks that hold the LP's graph rules to their promise on a GPT and a ViT.

For each setup (a model, alignment overrides, layers that start at zero) the LP's rates
are applied and every parametrized op's update after a few AdamW steps is measured at
several widths; the slope of its RMS against width (fit to the geometric mean over seeds)
must stay at or below :data:`GROWTH_TOLERANCE`. The same check runs with the rule the
graphs had before (``summed``: every product adds its factors' exponents, attention
scores ``r = r_q + r_k + a``), which it must catch.

Run ``python -m benchmarks.graph_rules`` for the wide sweep (widths 64 to 1024, 4 seeds):
it prints the per-op slope table and writes ``benchmarks/results/graph_rules.{json,md,png}``.
``tests/torch/test_graph_rules.py`` runs the CI-sized version.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.torch_models import GPT, ViT
from maxp_core import OpGraph, StabilityLP
from maxp_core.coordcheck import loglog_slope
from maxp_torch import Parametrization
from maxp_torch.diagnose import diagnose_axis

#: Largest update slope over width an op may show.
GROWTH_TOLERANCE = 0.1
RULES = ("product", "summed")
RESULTS = Path(__file__).parent / "results"
#: An output projection whose input's update can bind: ``u > alpha`` (close to what is measured).
BINDING = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class Setup:
    """One coordinate check: a model, the preset, overrides and zero-initialised layers."""

    name: str
    model: str  # "gpt" or "vit"
    alignment: str = "full"
    overrides: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    zero_init: tuple[str, ...] = ()


SETUPS = (
    Setup("gpt full", "gpt"),
    Setup("gpt no", "gpt", alignment="no"),
    Setup("gpt o, down bind", "gpt", overrides={"o": BINDING, "down": BINDING}),
    Setup("gpt zero v", "gpt", overrides={"o": BINDING}, zero_init=("v",)),
    Setup("gpt zero gate", "gpt", overrides={"down": BINDING}, zero_init=("gate",)),
    Setup("vit full", "vit"),
    Setup("vit o, down bind", "vit", overrides={"o": BINDING, "down": BINDING}),
)

VOCAB, CTX, BATCH, IMAGE = 32, 8, 4, 16


def summed(graph: OpGraph) -> OpGraph:
    """The graph under the former rule: products add exponents, scores are a plain product."""
    return OpGraph(
        [
            replace(node, merge="sum" if node.multiplies else node.merge, contraction=False, zero_inputs=())
            for node in graph.nodes
        ]
    )


def _model(setup: Setup, width: int) -> torch.nn.Module:
    if setup.model == "gpt":
        return GPT(d=width, blocks=1, vocab=VOCAB, ctx=CTX, zero_init=setup.zero_init)
    return ViT(d=width, blocks=1, image=IMAGE, zero_init=setup.zero_init)


def _batch(setup: Setup) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    if setup.model == "gpt":
        ids = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
        targets = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
        return ids, lambda out: torch.nn.functional.cross_entropy(out.reshape(-1, VOCAB), targets.reshape(-1))
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)
    labels = torch.randint(0, 10, (BATCH,), generator=gen)
    return images, lambda out: torch.nn.functional.cross_entropy(out, labels)


def build(
    setup: Setup, rule: str, width: int, seed: int = 0, lr: float = 1e-2
) -> tuple[torch.nn.Module, Parametrization]:
    """The model at ``width`` (initial weights from ``seed``) with the LP's rates under ``rule``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    model = _model(setup, width)
    sample, _ = _batch(setup)
    param = Parametrization(
        model,
        lr_prefactor=lr,
        sample_input=sample,
        alignment=setup.alignment,
        alignment_overrides=setup.overrides,
        seed=seed,
    )
    if rule == "summed":
        solution = StabilityLP(summed(param.graph), "adam").solve()
        for group in param.param_groups:
            if group["name"] in solution.c:
                k = param.names.index(group["name"])
                group["lr"] = lr * param.modules[k].width_dim ** -solution.c[group["name"]]
    return model, param


def update_slopes(
    setup: Setup, rule: str, widths: Sequence[int], seeds: Sequence[int], steps: int = 3
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per-op slope of the update RMS over width, and the RMS per width (geometric mean over seeds)."""
    sample, loss = _batch(setup)
    per_seed = []
    for seed in seeds:
        _, _, stats = diagnose_axis(
            lambda w, seed=seed: _with_groups(*build(setup, rule, w, seed)),
            lambda w: sample,
            widths,
            steps=steps,
            loss_fn=loss,
            seed=seed,
        )
        per_seed.append(stats)
    rms = {
        op: np.exp(np.mean([np.log(s[op]["update"]) for s in per_seed], axis=0)).tolist()
        for op in per_seed[0]
    }
    return {op: loglog_slope(widths, values) for op, values in rms.items()}, rms


def _jax_rules(setup: Setup) -> list[Any]:
    import math

    from maxp_jax import Rule

    if setup.model == "gpt":
        rules = [Rule("params/(tok|pos)/embedding", "embedding", layout="embedding")]
    else:
        rules = [
            Rule("params/patch/.*", "embedding"),
            Rule("params/pos/embedding", "embedding", layout="embedding"),
        ]
    for name in ("q", "k", "v", "o", "gate", "up", "down"):
        zero = math.inf if name in setup.zero_init else None
        pattern = rf"params/blocks_\d+/{name}/kernel"
        rules.append(Rule(pattern, "hidden", b=zero, alignment=setup.overrides.get(name)))
    return [*rules, Rule("params/head/kernel", "readout")]


def _jax_one_width(setup: Setup, rule: str, width: int, seed: int, steps: int, lr: float) -> dict[str, float]:
    """Each flax module's output RMS change after ``steps`` maxP AdamW steps, at one width."""
    import jax
    import jax.numpy as jnp
    import optax

    import maxp_jax
    from examples.flax_models import FlaxGPT, FlaxViT, flax_to_torch_name

    rng = np.random.default_rng(1)
    if setup.model == "gpt":
        model: Any = FlaxGPT(d=width, blocks=1, vocab=VOCAB, ctx=CTX)
        x = jnp.asarray(rng.integers(0, VOCAB, (BATCH, CTX)))
        labels = jnp.asarray(rng.integers(0, VOCAB, (BATCH, CTX)))
    else:
        model = FlaxViT(d=width, blocks=1, image=IMAGE)
        x = jnp.asarray(rng.standard_normal((BATCH, IMAGE, IMAGE, 3)), jnp.float32)
        labels = jnp.asarray(rng.integers(0, 10, (BATCH,)))
    key = jax.random.key(seed)
    params = jax.jit(model.init)(key, x)
    spec = maxp_jax.MaxPSpec(
        params, _jax_rules(setup), alignment=setup.alignment, apply_fn=model.apply, sample_input=x
    )
    params = jax.jit(lambda p, k: maxp_jax.abc_init(spec, p, k))(params, key)
    tx = maxp_jax.adamw(spec, lr)
    state = tx.init(params)
    if rule == "summed":
        solution = StabilityLP(summed(spec.graph), "adam").solve()
        state = maxp_jax.set_factors(state, spec, np.array([solution.c[layer.name] for layer in spec.layers]))

    @jax.jit
    def outputs(p: Any) -> dict[str, Any]:
        _, seen = model.apply(p, x, capture_intermediates=True, mutable=["intermediates"])
        flat = jax.tree_util.tree_flatten_with_path(seen["intermediates"])[0]
        return {
            flax_to_torch_name("/".join(str(k.key) for k in path[:-2])): value
            for path, value in flat
            if len(path) >= 3 and path[-2].key == "__call__"
        }

    def loss(p: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), labels).mean()

    @jax.jit
    def step(p: Any, s: Any) -> tuple[Any, Any]:
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    before = outputs(params)
    for _ in range(steps):
        params, state = step(params, state)
    after = outputs(params)
    wanted = {flax_to_torch_name(layer.name) for layer in spec.layers}
    return {
        name: float(np.sqrt(np.mean(np.square(np.asarray(after[name], np.float64) - np.asarray(v)))))
        for name, v in before.items()
        if name in wanted
    }


def jax_update_slopes(
    setup: Setup, rule: str, widths: Sequence[int], seeds: Sequence[int], steps: int = 3, lr: float = 1e-2
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """:func:`update_slopes` for the flax twins of the models (:mod:`examples.flax_models`)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    per_seed = [[_jax_one_width(setup, rule, w, seed, steps, lr) for w in widths] for seed in seeds]
    ops = list(per_seed[0][0])
    rms = {
        op: np.exp(np.mean([[np.log(at[op]) for at in runs] for runs in per_seed], axis=0)).tolist()
        for op in ops
    }
    return {op: loglog_slope(widths, values) for op, values in rms.items()}, rms


def _with_groups(model: torch.nn.Module, param: Parametrization) -> tuple[torch.nn.Module, Any]:
    return model, param.param_groups


def growing(slopes: dict[str, float], tolerance: float = GROWTH_TOLERANCE) -> dict[str, float]:
    """The ops whose update grows with width (or could not be fit)."""
    return {op: s for op, s in slopes.items() if not s <= tolerance}


def _rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for key, entry in results.items():
        worst = max(entry["slopes"].items(), key=lambda kv: kv[1])
        rows.append(
            (
                key,
                f"{worst[0]} {worst[1]:+.2f}",
                ", ".join(f"{op} {s:+.2f}" for op, s in entry["growing"].items()) or "none",
            )
        )
    return rows


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = sorted({key.rsplit(" / ", 1)[0] for key in results})
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(setups) + 2))
    for k, rule in enumerate(RULES):
        worst = [max(results[f"{s} / {rule}"]["slopes"].values()) for s in setups]
        ax.barh(np.arange(len(setups)) + 0.4 * k, worst, height=0.4, label=rule)
    ax.axvline(GROWTH_TOLERANCE, color="k", ls="--", lw=1, label=f"tolerance {GROWTH_TOLERANCE}")
    ax.set_yticks(np.arange(len(setups)) + 0.2, setups)
    ax.set_xlabel("largest update slope over width (any op)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from maxp_core.cli import format_table

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, Any] = {}
    for setup in SETUPS:
        for rule in RULES:
            slopes, rms = update_slopes(setup, rule, args.widths, range(args.seeds))
            results[f"{setup.name} / {rule}"] = {
                "slopes": slopes,
                "growing": growing(slopes),
                "update_rms": rms,
            }
            print(f"{setup.name:>20} / {rule:<7}: worst {max(slopes.values()):+.2f}", flush=True)
    table = format_table(_rows(results), ("setup / rule", "largest slope", f"ops above {GROWTH_TOLERANCE}"))
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"widths": args.widths, "seeds": args.seeds, "steps": 3, "tolerance": GROWTH_TOLERANCE}
    (args.out / "graph_rules.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "graph_rules.md").write_text(
        f"# Graph rules: update slopes over width\n\nwidths {args.widths}, {args.seeds} seeds, "
        f"3 AdamW steps, lr prefactor 1e-2\n\n```\n{table}\n```\n"
    )
    _plot(results, args.out / "graph_rules.png")
    return results


if __name__ == "__main__":
    main()
