"""The transform and the measurement under jit with parameters sharded over 8 host devices: kernels
split by output (tensor parallel) or by rows with the batch (FSDP), re-solving in the step and
between steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sharded_run_matches_unsharded() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "tests.jax.sharded_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == {"tensor/in_step", "fsdp/in_step", "fsdp/between"}
    for name, result in results.items():
        # Due after updates 3 and 5: between steps right after them, in the step inside
        # updates 4 and 6; both made 2 re-solves in 6 updates, sharded or not.
        assert result["solves"] == [2, 2], name
        assert result["c_gap"] < 1e-5, name
        assert result["factor_gap"] < 1e-5, name
        assert result["param_gap"] < 1e-5, name
    assert results["tensor/in_step"]["kernel_sharding"] == "P(None, 'x')"
    assert results["fsdp/between"]["kernel_sharding"].startswith("P('x'")  # the rows split
