"""The documentation: the site builds with warnings as errors, its API reference holds every
public name, and every Python block of the README and the docs runs.

A page's blocks run in order in one fresh interpreter (in a temporary folder), after the page's
setup, an HTML comment that starts ``<!-- setup``. A block right after
``<!-- not run: <reason> -->`` is skipped: a fragment of a loop or of a model of your own.
"""

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?P<skip><!-- not run: [^>]*-->\s*\n)?(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
SETUP = re.compile(r"<!-- setup[^\n]*\n(?P<code>.*?)-->", re.S)


def blocks(page: Path) -> tuple[list[str], int]:
    """The page's runnable code (setup first) and how many blocks it skips."""
    text = page.read_text()
    found = list(FENCE.finditer(text))
    code = [m.group("code") for m in SETUP.finditer(text)]
    code += [textwrap.dedent(m.group("code")) for m in found if not m.group("skip")]
    return code, sum(1 for m in found if m.group("skip"))


RUNNABLE = [page for page in PAGES if FENCE.search(page.read_text())]


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_the_python_blocks_of_each_page_run(page, tmp_path) -> None:
    code, _ = blocks(page)
    if not code:
        pytest.skip(f"every block of {page.name} is a fragment")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", "\n\n".join(code)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"


def test_every_skipped_block_says_why_and_most_blocks_run() -> None:
    ran = sum(len(blocks(page)[0]) for page in PAGES)
    skipped = sum(blocks(page)[1] for page in PAGES)
    assert ran > skipped


def test_the_site_builds_and_references_every_public_name(tmp_path) -> None:
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    for package in (
        "maxp_core",
        "maxp_core.compat",
        "maxp_core.sweep",
        "maxp_jax",
        "maxp_torch",
        "maxp_torch.published",
    ):
        page = (site / "api" / package / "index.html").read_text()
        module = importlib.import_module(package)
        missing = [
            name
            for name in module.__all__
            if f'id="{package}.{name}"' not in page and not (site / "api" / f"{package}.{name}").is_dir()
        ]
        assert missing == [], f"{package}: not in the API reference: {missing}"
