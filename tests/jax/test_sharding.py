"""The transform and the measurement under jit with parameters sharded over 8 host devices."""

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
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["solves"] == [2, 2]  # after steps 3 and 5
    assert "model" in result["kernel_sharding"]
    assert result["c_gap"] < 1e-5
    assert result["factor_gap"] < 1e-5
    assert result["param_gap"] < 1e-5
