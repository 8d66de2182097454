"""Attention scores at depth: which ``c`` keeps every op's update flat with width?

The published maxP tutorial annotates attention scores ``q @ k^T`` as a parameter-free layer
with ``a = 0.5`` (``1/sqrt(d)``). Under worst-case ("full") alignment maxp's LP then lets the
scores node's exponent compound through every block, and the earliest layers' ``c`` grows
with depth; the published code keeps the one-block ``c`` at every depth, which is what maxp
solves for ``a = 1`` (``1/d``, muP). This coordinate check trains the same GPT
(:class:`examples.torch_models.GPT`) a few AdamW steps at several widths and depths under
three arms and fits every op's update RMS against width:

- ``maxp a=0.5``: scores scaled by ``d^-0.5``, maxp's ``c`` for that graph;
- ``published c, a=0.5``: the same model, every layer pinned at the ``c`` maxp solves for
  ``a = 1`` (the published code's numbers);
- ``maxp a=1``: scores scaled by ``d^-1``, maxp's ``c``.

An op whose update RMS grows with width (slope above :data:`GROWTH`) would blow up at scale;
one that shrinks (below :data:`VANISH`) stops learning. Run
``python -m benchmarks.depth_coord`` for the sweep (widths 64 to 512, 1 to 6 blocks); it
prints the table and writes ``benchmarks/results/depth_coord.{json,md,png}``.
``tests/torch/test_depth_coord.py`` runs the CI-sized check.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import code_version, write_results
from examples.torch_models import GPT
from maxp_core.coordcheck import loglog_slope
from maxp_torch import Parametrization
from maxp_torch.diagnose import diagnose_axis

ARMS = ("maxp a=0.5", "published c, a=0.5", "maxp a=1")
#: An update slope over width above this grows; below :data:`VANISH` it vanishes.
GROWTH = 0.15
VANISH = -0.15
VOCAB, CTX, BATCH = 32, 8, 4
RESULTS = Path(__file__).parent / "results"


def _batch() -> tuple[torch.Tensor, Any]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
    targets = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
    return ids, lambda out: torch.nn.functional.cross_entropy(out.reshape(-1, VOCAB), targets.reshape(-1))


def solved_c(width: int, blocks: int, scores_a: float) -> dict[str, float]:
    """maxp's static ``c`` per weighted layer for the GPT with scores at ``d^-scores_a``."""
    ids, _ = _batch()
    model = GPT(d=width, blocks=blocks, vocab=VOCAB, ctx=CTX, scores_a=scores_a)
    param = Parametrization(model, sample_input=ids, seed=0)
    return dict(zip([param.names[k] for k in param.weighted], param.c.tolist(), strict=True))


def build(arm: str, width: int, blocks: int, seed: int = 0, lr: float = 1e-2) -> tuple[Any, Any]:
    """``(model, param_groups)`` of one arm at ``width`` and ``blocks``."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    ids, _ = _batch()
    scores_a = 1.0 if arm == "maxp a=1" else 0.5
    model = GPT(d=width, blocks=blocks, vocab=VOCAB, ctx=CTX, scores_a=scores_a)
    param = Parametrization(model, sample_input=ids, lr_prefactor=lr, seed=seed)
    if arm == "published c, a=0.5":
        # The LP of the a = 0.5 graph cannot hold these c (it refuses them as pins): set the rates.
        published = solved_c(width, blocks, 1.0)
        for group in param.param_groups:
            if group["layer_name"] in published:
                group["lr"] = lr * group["fan_in"] ** -published[group["layer_name"]]
    return model, param.param_groups


def update_slopes(
    arm: str, blocks: int, widths: Sequence[int], seeds: Sequence[int], steps: int = 3
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per-op slope of the update RMS over width, and the RMS per width (geometric mean over seeds)."""
    ids, loss = _batch()
    per_seed = []
    for seed in seeds:
        _, _, stats = diagnose_axis(
            lambda w, seed=seed: build(arm, w, blocks, seed),
            lambda w: ids,
            widths,
            steps=steps,
            loss_fn=loss,
            seed=seed,
        )
        per_seed.append(stats)
    rms = {
        op: np.exp(np.mean([np.log(s[op]["update"]) for s in per_seed], axis=0)).tolist()
        for op in per_seed[0]
        if all(np.all(np.asarray(s[op]["update"]) > 0) for s in per_seed)
    }
    return {op: loglog_slope(widths, values) for op, values in rms.items()}, rms


def extremes(slopes: dict[str, float]) -> tuple[tuple[str, float], tuple[str, float]]:
    """The op whose update grows fastest and the one that shrinks fastest."""
    ordered = sorted(slopes.items(), key=lambda kv: kv[1])
    return ordered[-1], ordered[0]


def run(depths: Sequence[int], widths: Sequence[int], seeds: int, steps: int = 3) -> dict[str, Any]:
    """``{"<blocks> blocks / <arm>": {"slopes", "update_rms", "c"}}``."""
    results: dict[str, Any] = {}
    for blocks in depths:
        for arm in ARMS:
            slopes, rms = update_slopes(arm, blocks, widths, range(seeds), steps)
            (top, high), (bottom, low) = extremes(slopes)
            c = solved_c(widths[0], blocks, 1.0 if arm == "maxp a=1" else 0.5)
            if arm == "published c, a=0.5":
                c = solved_c(widths[0], blocks, 1.0)
            results[f"{blocks} blocks / {arm}"] = {"slopes": slopes, "update_rms": rms, "c": c}
            print(
                f"{blocks} blocks, {arm:>20}: largest {top} {high:+.2f}, smallest {bottom} {low:+.2f}, "
                f"tok c {c['tok']:.2f}",
                flush=True,
            )
    return results


def split(slopes: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The weighted layers' slopes and the scores ops' (activations, kept apart)."""
    scores = {op: v for op, v in slopes.items() if op.endswith(".scores")}
    return {op: v for op, v in slopes.items() if op not in scores}, scores


def markdown(results: dict[str, Any], widths: Sequence[int], seeds: int) -> str:
    from maxp_core.cli import format_table

    rows = []
    for key, entry in results.items():
        layers, scores = split(entry["slopes"])
        (top, high), (bottom, low) = extremes(layers)
        verdict = " and ".join(
            word for word, off in (("grows", high > GROWTH), ("vanishes", low < VANISH)) if off
        )
        span = f"{min(scores.values()):+.2f} .. {max(scores.values()):+.2f}"
        rows.append(
            (key, f"{entry['c']['tok']:.2f}", f"{max(entry['c'].values()):.2f}", f"{bottom} {low:+.2f}",
             f"{top} {high:+.2f}", verdict or "flat", span)
        )  # fmt: skip
    table = format_table(
        rows,
        ("blocks / arm", "c tok", "c max", "layers: smallest", "layers: largest", "layers", "scores"),
    )
    return (
        "# Attention scores at depth: update slopes over width\n\n"
        f"Widths {list(widths)}, {seeds} seed(s), 3 AdamW steps at lr_prefactor 1e-2, GPT with "
        f"vocab {VOCAB}, context {CTX}, batch {BATCH} (`python -m benchmarks.depth_coord`). Slope of each "
        "op's update RMS against width; a weighted layer's above "
        f"{GROWTH} grows, below {VANISH} vanishes. The scores ops (activations) are listed apart.\n\n"
        f"```\n{table}\n```\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Smallest and largest update slope of every arm against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in ARMS:
        keys = [k for k in results if k.endswith(f"/ {arm}")]
        depths = [int(k.split()[0]) for k in keys]
        low = [extremes(split(results[k]["slopes"])[0])[1][1] for k in keys]
        high = [extremes(split(results[k]["slopes"])[0])[0][1] for k in keys]
        line = ax.plot(depths, low, marker="o", label=f"{arm}: smallest")[0]
        ax.plot(depths, high, marker="^", ls="--", color=line.get_color(), label=f"{arm}: largest")
    ax.axhspan(VANISH, GROWTH, color="0.9", label="flat")
    ax.set_xlabel("blocks")
    ax.set_ylabel("update slope over width (weighted layers)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.depth_coord", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    args = parser.parse_args(argv)
    results = run(args.depths, args.widths, args.seeds)
    text = markdown(results, args.widths, args.seeds)
    payload = {"widths": args.widths, "seeds": args.seeds, "code": code_version(), "results": results}
    write_results(args.out, "depth_coord", payload, text, args.json)
    plot(results, args.out / "depth_coord.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
