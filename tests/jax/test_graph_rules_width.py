"""The JAX twin of ``tests/torch/test_graph_rules.py``: the LP's rates keep every flax op's
update from growing with width, and the former summed rule is caught.

The flax GPT with its output projection and MLP output measured as binding (``u > alpha``),
widths 64 and 512, one seed (each width compiles its own step; the wide sweep is
``python -m benchmarks.graph_rules``).
"""

from __future__ import annotations

from benchmarks.graph_rules import SETUPS, growing, jax_update_slopes

WIDTHS = [64, 512]
BINDING = next(setup for setup in SETUPS if setup.name == "gpt o, down bind")


def test_no_flax_update_grows_with_width_and_the_summed_rule_is_caught() -> None:
    by_rule = jax_update_slopes(BINDING, WIDTHS, [0])
    product, summed = by_rule["product"][0], by_rule["summed"][0]
    assert len(product) == 10  # every layer: tok, pos, q, k, v, o, gate, up, down, head
    assert growing(product) == {}, product
    assert "blocks.0.o" in growing(summed), summed
