"""Train a PyTorch MLP on scikit-learn's digits with dynamic maxP (AdamW).

Run ``python -m examples.digits_torch``. Prints each layer's learning rate before and
after the first re-solve, the loss along the way, and the test accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from examples.common import RateLog, digits_arguments, digits_split
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
    x_train, x_test, y_train, y_test = (torch.as_tensor(v) for v in digits_split())
    y_train, y_test = y_train.long(), y_test.long()

    model = MLP(args.width, args.depth)
    param = Parametrization(
        model, lr_prefactor=args.lr, warmup_steps=args.warmup_steps, solve_interval=args.solve_interval
    )
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    param.capture_initial(x_train[:64])
    roles = [param.modules[k].layer_type for k in param.weighted]
    log = RateLog(param.get_layer_names(), roles, param.get_last_lr())
    print(f"maxP (muP, Adam) on digits: width {args.width}, depth {args.depth}, PyTorch\n")
    print(log.table())
    rng = np.random.default_rng(0)
    progress = tqdm(range(args.steps), desc="training", unit="step", leave=False, mininterval=0.5)
    for _ in progress:
        idx = torch.as_tensor(rng.integers(0, len(x_train), args.batch))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
        param.step(x_train[idx], optimizer)
        alignment = np.array(param.get_alignment()).T
        log.update(param.solves, param.get_last_lr(), alignment)
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    print()
    print(log.table())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    print(
        f"\nfinal loss {loss.item():.4f}; test accuracy {accuracy:.3f} after {args.steps} steps; "
        f"re-solves: {log.solves}"
    )


if __name__ == "__main__":
    main()
