"""What the digits examples share: options, data, progress, and the learning-rate report."""

from __future__ import annotations

import argparse
import functools
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from maxp_core.text import format_table


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


def sweep_main(module: str, doc: str, argv: list[str] | None = None) -> dict:
    """The sweep of ``module``'s ``train`` over the rates, widths, methods and seeds the command
    line gives (:mod:`maxp_core.sweep`), then its report; prints each setting's best rate."""
    from maxp_core.sweep import Grid, run_sweep, write_report

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--methods", nargs="+", default=["maxp", "mup"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--jobs", type=int, help="worker processes (default: one per CPU core)")
    parser.add_argument("--backend", choices=("local", "ray", "inline"), default="local")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    grid = Grid(lr=args.lrs, width=args.widths, method=args.methods, seed=seeds, steps=[args.steps])
    run_sweep(f"{module}:train", grid, args.out, backend=args.backend, jobs=args.jobs)
    summary = write_report(args.out)
    for s in summary["settings"]:
        print(f"{s['setting']}: best lr {s['best_lr']}, first diverging {s['first_diverging_lr']}")
    return summary


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (shipped with the package) in [0, 1]: x_train, x_test, y_train, y_test."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=0.25, random_state=0))  # type: ignore[return-value]


CHAR_VOCAB = 128  # ASCII; the few other bytes in the sources map to 127


@functools.cache
def stdlib_text() -> np.ndarray:
    """The Python standard library's top-level ``*.py`` files as byte codes (``uint8``, < 128).

    About 4.7 MB, always on disk, read in sorted file order so that the text is the same
    on every run of one Python version. Raises ``FileNotFoundError`` when the sources
    are missing (some stripped installs ship only bytecode).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no *.py files in the standard library folder {root}")
    raw = b"\n".join(path.read_bytes() for path in files)
    return np.minimum(np.frombuffer(raw, dtype=np.uint8), CHAR_VOCAB - 1)


def char_split(validation: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stdlib_text` cut into a training part and a held-out tail of ``validation``."""
    text = stdlib_text()
    cut = int(len(text) * (1.0 - validation))
    return text[:cut], text[cut:]


def char_windows(text: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``text[s : s + length]`` and next-character targets, one row per start.

    Example:
      >>> x, y = char_windows(np.arange(10, dtype=np.uint8), np.array([0, 4]), 3)
      >>> x.tolist(), y.tolist()
      ([[0, 1, 2], [4, 5, 6]], [[1, 2, 3], [5, 6, 7]])
    """
    index = starts[:, None] + np.arange(length + 1)[None, :]
    window = text[index].astype(np.int64)
    return window[:, :-1], window[:, 1:]


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
