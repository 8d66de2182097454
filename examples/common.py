"""What the digits examples share: options, data, progress, and the learning-rate report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from maxp_core.cli import format_table


def digits_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """Parse the options every digits example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--solve-interval", type=int, default=20)
    return parser.parse_args(argv)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (shipped with the package) in [0, 1]: x_train, x_test, y_train, y_test."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=0.25, random_state=0))  # type: ignore[return-value]


class RateLog:
    """Per-layer learning rates at the start, after the first and after the last re-solve."""

    def __init__(self, names: Sequence[str], roles: Sequence[str], start: Sequence[float]) -> None:
        self.names, self.roles, self.start = list(names), list(roles), list(start)
        self.first: list[float] | None = None
        self.last: list[float] | None = None
        self.alignment: np.ndarray | None = None
        self.solves = 0

    def update(self, solves: int, rates: Sequence[float], alignment: np.ndarray) -> None:
        """Call after each step with the number of re-solves so far."""
        if solves > self.solves:
            self.solves = solves
            self.last, self.alignment = list(rates), np.asarray(alignment)
            if self.first is None:
                self.first = list(rates)

    def table(self) -> str:
        def show(values: list[float] | None, k: int) -> str:
            return "-" if values is None else f"{values[k]:.3g}"

        rows = []
        for k, (name, role) in enumerate(zip(self.names, self.roles, strict=True)):
            measured = (
                "-" if self.alignment is None else "({:.2f}, {:.2f}, {:.2f})".format(*self.alignment[k])
            )
            rows.append((name, role, show(self.start, k), show(self.first, k), show(self.last, k), measured))
        header = ("layer", "role", "lr at start", "after 1st solve", "after last solve", "(alpha, omega, u)")
        return format_table(rows, header)
