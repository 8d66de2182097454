"""The torch digits example runs end to end and re-solves."""

import io
from contextlib import redirect_stdout

from examples.digits_torch import main


def test_digits_example_runs() -> None:
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
    assert "lr after 1st solve" in text
    assert "re-solves: 3" in text
    assert float(text.split("test accuracy ")[1].split()[0]) > 0.5
