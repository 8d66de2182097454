"""Which learning rate should a maxP layer's bias get? A coordinate check of the bias's contribution.

Run ``python -m benchmarks.bias_rule`` (seconds on a CPU). A PyTorch MLP (embedding, hidden,
readout; muP under full alignment) trains 3 steps at widths 64 to 1024, with each layer's
bias either at its layer's rate (``bias_rule="layer"``, the default) or at the rate the maths
asks for (``bias_rule="constant-input"``, :mod:`maxp_core.biases`): a bias is a weight on a
constant input of size 1 where its layer's weight sums ``n`` inputs, so with the same output
multiplier it needs an ``n``-fold rate wherever the fan-in
grows: ``c_bias = c - 1`` (hidden, readout), ``c_bias = c`` (embedding); under Adam that is
``c_bias = -a``, whatever the alignment. The table gives the log-log slope against width of
the RMS change of each bias's contribution to its layer's output (``multiplier * delta b``):
0 is width-independent (muP's table: biases at a constant rate under Adam), -1 vanishes.
Writes ``benchmarks/results/bias_rule.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maxp_torch import Parametrization, Rule

ROLES = ("embedding", "hidden", "readout")
RULES = [Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")]
OUT = Path(__file__).parent / "results"


def bias_changes(width: int, optimizer: str, bias_rule: str, lr: float, steps: int = 3) -> list[float]:
    """The RMS change of each layer's ``multiplier * bias`` after ``steps`` steps."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
    )
    param = Parametrization(model, optimizer, rules=RULES, lr_prefactor=lr, seed=0, bias_rule=bias_rule)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(param.param_groups)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
    layers = [model[0], model[2], model[4]]
    before = [layer.bias.detach().clone() for layer in layers]
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    scales = [float(m.scale) for _, m in param._ruled.layers]
    return [
        float(((layer.bias.detach() - b) * s).pow(2).mean().sqrt())
        for layer, b, s in zip(layers, before, scales, strict=True)
    ]


def slopes(widths: list[int], optimizer: str, bias_rule: str, lr: float) -> list[float]:
    changes = np.log([bias_changes(w, optimizer, bias_rule, lr) for w in widths])
    logs = np.log(widths)
    return [float(np.polyfit(logs, changes[:, k], 1)[0]) for k in range(len(ROLES))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bias_rule", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows, results = [], {}
    for optimizer, lr in (("adam", 1e-3), ("sgd", 1e-2)):
        for rule in ("layer", "constant-input"):
            found = slopes(args.widths, optimizer, rule, lr)
            results[f"{optimizer}/{rule}"] = found
            rows.append(
                (
                    optimizer,
                    "layer" if rule == "layer" else "constant-input",
                    *(f"{s:+.2f}" for s in found),
                )
            )
    from maxp_core.text import format_table

    table = format_table(rows, ("optimizer", "bias rate", *(f"{r} slope" for r in ROLES)))
    text = (
        "# Bias rate: coordinate check of the bias's contribution\n\n"
        f"Widths {args.widths}, muP, full alignment, 3 steps; log-log slope of the RMS change of\n"
        "multiplier * bias against width (0: width-independent, -1: vanishes).\n\n"
        f"```\n{table}\n```\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias_rule.md").write_text(text)
    (args.out / "bias_rule.json").write_text(json.dumps({"widths": args.widths, "slopes": results}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
