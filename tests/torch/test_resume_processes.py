"""Resume across processes: 10 steps, a checkpoint on disk, 10 more in a fresh interpreter.

The fresh process shares nothing with the first but the files, so anything a checkpoint
forgets (a seed, an EMA, a chained schedule's position, the graph's merge and score nodes'
alignments) shows up as a difference from the straight 20-step run made here.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.torch import resume_process

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


def test_resume_in_a_fresh_process_is_bit_exact(tmp_path) -> None:
    for phase in ("first", "second"):
        subprocess.run(
            [sys.executable, "-m", "tests.torch.resume_process", phase, str(tmp_path)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    for i, name in enumerate(resume_process.MODELS):
        run = resume_process.build(name)
        run[1].capture_initial(run[5])
        resume_process.train(run, resume_process.STEPS, seed=1)
        resume_process.train(run, resume_process.STEPS, seed=2)
        straight = resume_process.ended_with(run)
        resumed = torch.load(tmp_path / f"{i}.end.pt", weights_only=False)
        for key, value in straight["weights"].items():
            assert torch.equal(value, resumed["weights"][key]), (name, key)
        np.testing.assert_array_equal(straight["c"], resumed["c"], err_msg=name)
        np.testing.assert_array_equal(straight["alignment"], resumed["alignment"], err_msg=name)
        assert straight["lr"] == resumed["lr"], name
        assert straight["counters"] == resumed["counters"], name
        step_count, solves = straight["counters"][:2]
        assert step_count == 2 * resume_process.STEPS and solves >= 9, name
        assert len(run[1].graph.nodes) > len(run[1].names), name  # merge nodes hold alignments too
