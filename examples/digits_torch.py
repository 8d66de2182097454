"""Train a PyTorch MLP on scikit-learn's digits with dynamic maxP (AdamW).

Run ``python -m examples.digits_torch``. Prints each layer's learning rate before and
after the first re-solve, the loss along the way, and the test accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from examples.common import digits_arguments
from maxp_core.cli import format_table
from maxp_torch import Parametrization, ParametrizedModule


class MLP(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        sizes = [64] + [width] * (depth - 1) + [10]
        types = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
        self.layers = nn.ModuleList(
            ParametrizedModule(nn.Linear(sizes[i], sizes[i + 1]), width_dim=width, layer_type=types[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def main(argv: list[str] | None = None) -> None:
    args = digits_arguments(__doc__.split("\n\n")[0], argv)

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

    model = MLP(args.width, args.depth)
    param = Parametrization(
        model, lr_prefactor=args.lr, warmup_steps=args.warmup_steps, solve_interval=args.solve_interval
    )
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    param.capture_initial(x_train[:64])
    before, after, alignment = param.get_last_lr(), None, None
    rng = np.random.default_rng(0)
    for t in range(args.steps):
        idx = torch.as_tensor(rng.integers(0, len(x_train), args.batch))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
        param.step(x_train[idx], optimizer)
        if after is None and param.solves:
            after, alignment = param.get_last_lr(), param.get_alignment()
        if t % 50 == 0 or t == args.steps - 1:
            print(f"step {t:4d}  loss {loss.item():.4f}")
    rows = []
    for k, name in enumerate(param.get_layer_names()):
        measured = (
            ""
            if alignment is None
            else f"({alignment[0][k]:.2f}, {alignment[1][k]:.2f}, {alignment[2][k]:.2f})"
        )
        rows.append((name, f"{before[k]:.3g}", "-" if after is None else f"{after[k]:.3g}", measured))
    print()
    print(format_table(rows, ("layer", "lr before", "lr after 1st solve", "(alpha, omega, u)")))
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    print(f"\ntest accuracy {accuracy:.3f} after {args.steps} steps; re-solves: {param.solves}")


if __name__ == "__main__":
    main()
