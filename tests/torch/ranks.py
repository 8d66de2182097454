"""Run a ``tests.torch.*_run`` program in a subprocess and read the JSON each rank wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_ranks(program: str, world: int, out_dir: Path, *args: str, timeout: float = 300) -> list[dict]:
    """``python -m <program> WORLD OUT_DIR *args``; one ``rank<r>.json`` per rank, in rank order."""
    out_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", program, str(world), str(out_dir), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
