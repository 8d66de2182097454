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

import torch
from torch import nn

from benchmarks.graph_rules import seeded_update_slopes
from benchmarks.report import code_version, write_results
from examples.torch_models import GPT
from maxp_torch import Parametrization, ParametrizedModule

ARMS = ("maxp a=0.5", "published c, a=0.5", "maxp a=1")
MODELS = ("gpt", "multihead")
HEADS = 4
#: An update slope over width above this grows; below :data:`VANISH` it vanishes.
GROWTH = 0.15
VANISH = -0.15
VOCAB, CTX, BATCH = 32, 8, 4
RESULTS = Path(__file__).parent / "results"


class MultiHeadBlock(nn.Module):
    """A pre-LN block as the published tutorial writes one: fused ``qkv`` over ``HEADS`` heads,
    the scores a parameter-free ``"readout"`` layer at the head width with exponent ``a``, an
    output projection and a SwiGLU MLP."""

    def __init__(self, d: int, scores_a: float) -> None:
        super().__init__()
        head = d // HEADS
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = ParametrizedModule(nn.Linear(d, 3 * d, bias=False), d, "hidden")
        self.scores = ParametrizedModule(
            lambda q, k: q @ k.transpose(-2, -1), width_dim=head, layer_type="readout", a=scores_a
        )
        self.proj = ParametrizedModule(nn.Linear(d, d, bias=False), d, "hidden")
        self.gate = ParametrizedModule(nn.Linear(d, 2 * d, bias=False), d, "hidden")
        self.up = ParametrizedModule(nn.Linear(d, 2 * d, bias=False), d, "hidden")
        self.down = ParametrizedModule(nn.Linear(2 * d, d, bias=False), 2 * d, "hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(self.scores(q, k), -1) @ v
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, d))
        h = self.ln2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class MultiHead(nn.Module):
    """Token and position embeddings, ``blocks`` :class:`MultiHeadBlock` s, a readout."""

    def __init__(self, d: int, blocks: int, scores_a: float) -> None:
        super().__init__()
        self.tok = ParametrizedModule(nn.Embedding(VOCAB, d), d, "embedding")
        self.pos = ParametrizedModule(nn.Embedding(CTX, d), d, "embedding")
        self.blocks = nn.ModuleList(MultiHeadBlock(d, scores_a) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)
        self.head = ParametrizedModule(nn.Linear(d, VOCAB, bias=False), d, "readout")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def make_model(model: str, width: int, blocks: int, scores_a: float) -> nn.Module:
    if model == "gpt":
        return GPT(d=width, blocks=blocks, vocab=VOCAB, ctx=CTX, scores_a=scores_a)
    if model == "multihead":
        return MultiHead(width, blocks, scores_a)
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def _batch() -> tuple[torch.Tensor, Any]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
    targets = torch.randint(0, VOCAB, (BATCH, CTX), generator=gen)
    return ids, lambda out: torch.nn.functional.cross_entropy(out.reshape(-1, VOCAB), targets.reshape(-1))


def solved_c(width: int, blocks: int, scores_a: float, model: str = "gpt") -> dict[str, float]:
    """maxp's static ``c`` per weighted layer for ``model`` with scores at ``d^-scores_a``."""
    ids, _ = _batch()
    param = Parametrization(make_model(model, width, blocks, scores_a), sample_input=ids, seed=0)
    return dict(zip([param.names[k] for k in param.weighted], param.c.tolist(), strict=True))


def build(
    arm: str, width: int, blocks: int, seed: int = 0, lr: float = 1e-2, model: str = "gpt"
) -> tuple[Any, Any]:
    """``(model, param_groups)`` of one arm at ``width`` and ``blocks``."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    ids, _ = _batch()
    scores_a = 1.0 if arm == "maxp a=1" else 0.5
    net = make_model(model, width, blocks, scores_a)
    param = Parametrization(net, sample_input=ids, lr_prefactor=lr, seed=seed)
    if arm == "published c, a=0.5":
        # The LP of the a = 0.5 graph cannot hold these c (it refuses them as pins): set the rates.
        published = solved_c(width, blocks, 1.0, model)
        for group in param.param_groups:
            if group["layer_name"] in published:
                group["lr"] = lr * group["fan_in"] ** -published[group["layer_name"]]
    return net, param.param_groups


def update_slopes(
    arm: str, blocks: int, widths: Sequence[int], seeds: Sequence[int], steps: int = 3, model: str = "gpt"
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per-op slope of the update RMS over width, and the RMS per width (geometric mean over seeds)."""
    ids, loss = _batch()
    return seeded_update_slopes(
        lambda w, seed: build(arm, w, blocks, seed, model=model),
        ids,
        loss,
        widths,
        seeds,
        steps,
        drop_unmoved=True,
    )


def extremes(slopes: dict[str, float]) -> tuple[tuple[str, float], tuple[str, float]]:
    """The op whose update grows fastest and the one that shrinks fastest."""
    ordered = sorted(slopes.items(), key=lambda kv: kv[1])
    return ordered[-1], ordered[0]


def run(
    depths: Sequence[int], widths: Sequence[int], seeds: int, steps: int = 3, models: Sequence[str] = MODELS
) -> dict[str, Any]:
    """``{"<model> / <blocks> blocks / <arm>": {"slopes", "update_rms", "c"}}``."""
    results: dict[str, Any] = {}
    for model in models:
        for blocks in depths:
            for arm in ARMS:
                slopes, rms = update_slopes(arm, blocks, widths, range(seeds), steps, model)
                (top, high), (bottom, low) = extremes(slopes)
                c = solved_c(widths[0], blocks, 0.5 if arm == "maxp a=0.5" else 1.0, model)
                results[f"{model} / {blocks} blocks / {arm}"] = {"slopes": slopes, "update_rms": rms, "c": c}
                print(
                    f"{model}, {blocks} blocks, {arm:>20}: largest {top} {high:+.2f}, smallest {bottom} "
                    f"{low:+.2f}, tok c {c['tok']:.2f}",
                    flush=True,
                )
    return results


def split(slopes: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The weighted layers' slopes and the scores ops' (activations, kept apart)."""
    scores = {op: v for op, v in slopes.items() if op.endswith(".scores")}
    return {op: v for op, v in slopes.items() if op not in scores}, scores


def markdown(results: dict[str, Any], widths: Sequence[int], seeds: int) -> str:
    from maxp_core.text import format_table

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
        f"Widths {list(widths)}, {seeds} seed(s), 3 AdamW steps at lr_prefactor 1e-2, vocab {VOCAB}, "
        f"context {CTX}, batch {BATCH} (`python -m benchmarks.depth_coord`). `gpt`: "
        "`examples.torch_models.GPT` (one head, scores at the model width); `multihead`: fused qkv over "
        f"{HEADS} heads, scores at the head width, as the published tutorial writes them. Slope of each "
        "op's update RMS against width; a weighted layer's above "
        f"{GROWTH} grows, below {VANISH} vanishes. The scores ops (activations) are listed apart.\n\n"
        f"```\n{table}\n```\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Smallest and largest update slope of the weighted layers against depth: one panel per
    model, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(k.split(" / ")[0] for k in results))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for arm in ARMS:
            keys = [k for k in results if k.startswith(f"{model} / ") and k.endswith(f"/ {arm}")]
            depths = [int(k.split(" / ")[1].split()[0]) for k in keys]
            low = [extremes(split(results[k]["slopes"])[0])[1][1] for k in keys]
            high = [extremes(split(results[k]["slopes"])[0])[0][1] for k in keys]
            line = ax.plot(depths, low, marker="o", label=f"{arm}: smallest")[0]
            ax.plot(depths, high, marker="^", ls="--", color=line.get_color(), label=f"{arm}: largest")
        ax.axhspan(VANISH, GROWTH, color="0.9", label="flat")
        ax.set_title(model)
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
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    args = parser.parse_args(argv)
    results = run(args.depths, args.widths, args.seeds, models=args.models)
    text = markdown(results, args.widths, args.seeds)
    payload = {"widths": args.widths, "seeds": args.seeds, "code": code_version(), "results": results}
    write_results(args.out, "depth_coord", payload, text, args.json)
    plot(results, args.out / "depth_coord.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
