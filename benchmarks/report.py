"""Writing a benchmark's results: ``<name>.json`` and ``<name>.md``, printed too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, name: str, payload: dict[str, Any], markdown: str, print_json: bool) -> None:
    """Write ``out/<name>.json`` and ``out/<name>.md``; print the Markdown (and the JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    if print_json:
        print(json.dumps(payload, indent=2))
