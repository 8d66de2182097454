"""The digits examples run end to end, re-solve, and learn."""

import importlib
import io
from contextlib import redirect_stdout

import pytest


@pytest.mark.parametrize(("example", "framework"), [("digits_jax", "jax"), ("digits_torch", "torch")])
def test_digits_example_runs(example: str, framework: str) -> None:
    pytest.importorskip(framework)
    main = importlib.import_module(f"examples.{example}").main
    out = io.StringIO()
    with redirect_stdout(out):
        main(
            [
                "--width",
                "64",
                "--depth",
                "3",
                "--steps",
                "40",
                "--warmup-steps",
                "5",
                "--solve-interval",
                "10",
            ]
        )
    text = out.getvalue()
    assert "after last solve" in text
    assert "re-solves: 3" in text
    assert float(text.split("test accuracy ")[1].split()[0]) > 0.5
