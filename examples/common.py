"""What the digits examples share: their command line."""

from __future__ import annotations

import argparse


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
