"""``benchmarks.base_width`` at toy size: at the base width the standard model and muP with that base
width are one model (identical loss curves), and the report reads the grid steps right."""

import json

from benchmarks.base_width import grid_steps, main


def test_at_the_base_width_sp_and_mup_train_identically(tmp_path) -> None:
    main(
        [
            "--widths",
            "16",
            "32",
            "--lrs",
            "1e-3",
            "1e-2",
            "--seeds",
            "1",
            "--steps",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    summary = json.loads((tmp_path / "base_width.json").read_text())
    assert summary["identical_at_base"] is True
    assert set(summary["best"]) == {f"{m}@{w}" for m in ("sp", "mup-full", "maxp") for w in (16, 32)}
    assert summary["best"]["sp@16"] == summary["best"]["mup-full@16"] == summary["best"]["maxp@16"]
    assert (tmp_path / "base_width.png").stat().st_size > 0


def test_grid_steps_count_grid_points_between_rates() -> None:
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    assert grid_steps(1e-2, 3e-3, lrs) == 1
    assert grid_steps(1e-3, 3e-2, lrs) == -3
    assert grid_steps(None, 3e-3, lrs) is None
