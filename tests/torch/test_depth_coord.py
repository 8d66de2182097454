"""Attention scores at depth, CI-sized (``benchmarks.depth_coord`` runs the wide sweep).

Widths 64 to 256, 1 and 4 blocks, one seed, 3 AdamW steps. With the scores at ``a = 1``
every weighted layer's update stays flat with width at both depths; with the published
``a = 0.5`` annotation maxp's worst-case rates make the earliest layers' updates vanish
(which the construction warns about), and the published ``c`` lets some op's update grow.
"""

import pytest

from benchmarks.depth_coord import update_slopes
from maxp_core import MaxPWarning

WIDTHS = (64, 128, 256)
#: The band a flat update slope stays in at these few widths and one seed.
FLAT = 0.3


def weighted(slopes: dict[str, float]) -> dict[str, float]:
    """The trained layers' slopes (the scores op is an activation: its own row is kept apart)."""
    return {op: s for op, s in slopes.items() if not op.endswith(".scores")}


@pytest.mark.parametrize("blocks", [1, 4])
def test_muP_scores_keep_every_layer_flat_at_every_depth(blocks) -> None:
    slopes, _ = update_slopes("maxp a=1", blocks, WIDTHS, [0])
    off = {op: round(s, 2) for op, s in weighted(slopes).items() if abs(s) > FLAT}
    assert not off, f"layers whose update grows or vanishes with width at {blocks} block(s): {off}"


def test_scores_at_one_over_sqrt_d_are_warned_about_and_slow_the_early_layers() -> None:
    warned = r"attention scores 'blocks.0.scores'.*c growing by up to 1 - a = 0.5"
    with pytest.warns(MaxPWarning, match=warned):
        slopes, _ = update_slopes("maxp a=0.5", 4, WIDTHS, [0])
    slowest = min(weighted(slopes).items(), key=lambda kv: kv[1])
    assert slowest[1] < -1.0, slowest
    assert slowest[0] in ("tok", "pos", "blocks.0.q", "blocks.0.k", "blocks.0.v")


def test_the_published_c_for_one_over_sqrt_d_scores_lets_an_update_grow() -> None:
    slopes, _ = update_slopes("published c, a=0.5", 4, WIDTHS, [0])
    assert max(slopes.values()) > FLAT, slopes
