"""Plain-text tables, for the command line, the reports and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain monospace table with a rule under the header; floats to 4 significant digits.

    Examples:
      >>> print(format_table([("fc", 0.5), ("head", 1 / 3)], ("layer", "c")))
      layer       c
      -----  ------
         fc     0.5
       head  0.3333
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value + 0.0:.4g}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[k]) for r in text)) for k, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)
