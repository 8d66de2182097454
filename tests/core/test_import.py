"""``import maxp_core`` must not need a deep-learning framework."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"jax", "jaxlib", "flax", "optax", "torch"}:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import maxp_core, maxp_core.cli
    sol = maxp_core.StabilityLP(maxp_core.chain(3), "sgd").solve()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"jax", "flax", "optax", "torch"})
    print(loaded, sol.objective)
    """
)


def test_import_without_jax_and_torch() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "[]"
