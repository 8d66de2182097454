"""The main job: train an MLP on scikit-learn's digits with dynamic maxP.

``python -m examples.train`` (JAX) or ``python -m examples.train --framework torch``;
the other options are those of :mod:`examples.digits_jax` and :mod:`examples.digits_torch`.
Prints the per-layer learning rates at the start, after the first and the last
re-solve, and the final loss and test accuracy.
"""

from __future__ import annotations

import argparse
import importlib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
    args, rest = parser.parse_known_args(argv)
    importlib.import_module(f"examples.digits_{args.framework}").main(rest or [])


if __name__ == "__main__":
    main()
