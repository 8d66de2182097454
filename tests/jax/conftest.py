import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("flax")
