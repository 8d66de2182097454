"""The depth sweep: each method's rule at each depth, and a tiny sweep end to end."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks.depth_sweep import depth_rule, main, task_at_depth
from benchmarks.sweep_tasks import load_task
from maxp_core import BranchScaling, ChenScaling


def test_each_method_gets_its_rule() -> None:
    digits, chars = load_task("digits"), load_task("chars")
    assert task_at_depth(digits, 8).depth == 8 and task_at_depth(chars, 3).blocks == 3
    assert depth_rule(digits, "mup", 8, 2, 64) is None and depth_rule(digits, "sp", 8, 2, 64) is None
    chen = depth_rule(digits, "mup-chen", 8, 2, 64)
    assert isinstance(chen, ChenScaling) and chen.base == 2
    completep = depth_rule(chars, "mup-completep", 4, 1, 32)
    assert isinstance(completep, BranchScaling) and completep.branch_multiplier == pytest.approx(0.25)
    with pytest.raises(ValueError, match="residual blocks"):
        depth_rule(digits, "mup-completep", 4, 2, 64)


def test_tiny_depth_sweep_writes_its_report(tmp_path) -> None:
    """At the base depth Chen's rule is muP (factor 1); at depth 4 it trains differently."""
    args = ["--task", "digits", "--depths", "2", "4", "--lrs", "0.01", "--seeds", "1", "--steps", "5"]
    assert main([*args, "--width", "32", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "depth.md").read_text()
    assert "mup-chen" in report and (tmp_path / "depth-transfer.png").exists()
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    assert set(runs) == {f"{m}_d{d}_lr0.01_s0" for m in ("sp", "mup", "mup-chen") for d in (2, 4)}
    assert runs["mup-chen_d2_lr0.01_s0"]["losses"] == runs["mup_d2_lr0.01_s0"]["losses"]  # factor 1
    assert runs["mup-chen_d4_lr0.01_s0"]["losses"] != runs["mup_d4_lr0.01_s0"]["losses"]
    summary = json.loads((tmp_path / "depth.json").read_text())["summary"]
    assert set(summary["best"]["mup-chen"]) == {"2", "4"}
