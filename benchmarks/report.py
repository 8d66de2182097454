"""Writing a benchmark's results: ``<name>.json`` and ``<name>.md``, printed too, each
stamped with the code version that produced it (:func:`code_version`)."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: What counts as code: a change here (outside the results) makes the version ``-dirty``.
_CODE = ("maxp_core", "maxp_jax", "maxp_torch", "benchmarks", "examples", "pyproject.toml", "constraints.txt")
_NOT_CODE = ":(exclude)benchmarks/results"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The commit the benchmarks run from, with ``-dirty`` when a tracked file of the code
    (the packages, benchmarks, examples and install files; not the results or the docs)
    differs from it; ``"unknown"`` outside a git checkout.

    Example:
      >>> version = code_version()
      >>> version == "unknown" or len(version.removesuffix("-dirty")) == 12
      True
    """

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "--short=12", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    changed = git("diff", "--quiet", "HEAD", "--", *_CODE, _NOT_CODE)
    dirty = changed is None or changed.returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def write_results(out: Path, name: str, payload: dict[str, Any], markdown: str, print_json: bool) -> None:
    """Write ``out/<name>.json`` (with ``"code"``: :func:`code_version`) and ``out/<name>.md``;
    print the Markdown (and the JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "code": payload.get("code", code_version())}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown.rstrip("\n") + f"\n\nCode version: `{payload['code']}`.\n")
    print(markdown)
    if print_json:
        print(json.dumps(payload, indent=2))
