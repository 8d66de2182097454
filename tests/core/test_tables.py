"""Alignment tables, metrics logs and the measure-only resolver, against hand computations."""

import json
import math

import numpy as np
import pytest

import maxp_core as mc
from maxp_core.cli import main
from maxp_core.metrics import MetricsLog, MetricsRun, metrics_record, read_metrics
from maxp_core.tables import AlignmentTable, layer_kind, measure_table, resolve_overrides


@pytest.mark.parametrize(
    ("name", "role", "kind"),
    [
        ("transformer.h.3.attn.c_attn", "hidden", "qkv"),  # GPT-2
        ("transformer.h.3.attn.c_proj", "hidden", "attn_out"),
        ("transformer.h.3.mlp.c_fc", "hidden", "mlp_up"),
        ("transformer.h.3.mlp.c_proj", "hidden", "mlp_down"),
        ("model.layers.0.self_attn.q_proj", "hidden", "q"),  # LLaMA (HF)
        ("model.layers.0.self_attn.o_proj", "hidden", "attn_out"),
        ("model.layers.0.mlp.gate_proj", "hidden", "mlp_gate"),
        ("layers.0.feed_forward.w1", "hidden", "mlp_gate"),  # LLaMA (Meta): w1 gate, w3 up, w2 down
        ("layers.0.feed_forward.w3", "hidden", "mlp_up"),
        ("layers.0.attention.wo", "hidden", "attn_out"),
        ("encoder.layer.1.attention.self.value", "hidden", "v"),  # BERT
        ("encoder.layer.1.attention.output.dense", "hidden", "attn_out"),
        ("encoder.layer.1.intermediate.dense", "hidden", "mlp_up"),
        ("encoder.layer.1.output.dense", "hidden", "mlp_down"),
        ("blocks.2.attn.qkv", "hidden", "qkv"),  # timm ViT
        ("blocks.2.attn.proj", "hidden", "attn_out"),
        ("blocks.2.mlp.fc2", "hidden", "mlp_down"),
        ("params/blocks/down[3]", "hidden", "mlp_down"),  # a stacked JAX slice
        ("2", "hidden", "hidden"),
        ("lm_head", "readout", "readout"),
        ("wte", "embedding", "embedding"),
    ],
)
def test_layer_kinds_across_model_families(name: str, role: str, kind: str) -> None:
    assert layer_kind(name, role) == kind


def _chain_c(triples: dict[int, tuple[float, float, float]], layers: int = 4) -> dict[str, float]:
    """The LP's c of a muP chain whose layers ``k`` have the alignments ``triples[k]``."""
    preset = mc.alignment_preset("full")
    graph = mc.chain(layers, alignment=[triples.get(k, preset) for k in range(layers)])
    return mc.StabilityLP(graph, "adam").solve().c


def test_table_round_trip_gives_the_same_c(tmp_path) -> None:
    table = AlignmentTable(
        {"readout": (0.6, 0.5, 0.55), "hidden": (0.71, 0.52, 0.64)},
        {"hidden": 2, "readout": 1},
        {"width": 64},
    )
    path = table.write(tmp_path / "table.json")
    again = AlignmentTable.read(path)
    assert again == table and list(again.alignments) == ["hidden", "readout"]  # KINDS order
    layers = [("layer0", "embedding"), ("layer1", "hidden"), ("layer2", "hidden"), ("layer3", "readout")]
    before, after = resolve_overrides(layers, table), resolve_overrides(layers, again)
    assert before == after == {1: (0.71, 0.52, 0.64), 2: (0.71, 0.52, 0.64), 3: (0.6, 0.5, 0.55)}
    assert _chain_c(before) == _chain_c(after)
    assert _chain_c(before) != _chain_c({})  # the table changes the answer


def _record(step: int, solves: int, alignments: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    columns = {f: [t[i] for t in alignments.values()] for i, f in enumerate(("alpha", "omega", "u"))}
    return metrics_record(list(alignments), columns, {"step": step, "solves": solves, "failures": 0})


def test_measured_table_is_the_median_over_layers_of_late_means() -> None:
    rng = np.random.default_rng(0)
    layers = {"emb": "embedding", "b.0.q": "hidden", "b.1.q": "hidden", "b.2.q": "hidden", "head": "readout"}
    records, truth = [], {name: [] for name in layers}
    solves = 0
    for step in range(1, 101):
        if step % 10 == 0:
            solves += 1
        values = {name: tuple(rng.uniform(0.4, 1.0, 3)) for name in layers}
        if records and step % 10:  # between measurements a record repeats the last one
            values = {name: (records[-1][f"maxp/alpha/{name}"], records[-1][f"maxp/omega/{name}"],
                             records[-1][f"maxp/u/{name}"]) for name in layers}  # fmt: skip
        records.append(_record(step, solves, values))
        if step % 10 == 0 and step > 60:
            for name in layers:
                truth[name].append(values[name])
    table = measure_table(MetricsRun(layers, records), fraction=0.4)
    means = {name: np.mean(truth[name], axis=0) for name in layers}
    expected_q = np.median([means[f"b.{i}.q"] for i in range(3)], axis=0)
    assert set(table.alignments) == {"q", "readout"}  # embeddings left out
    np.testing.assert_allclose(table.alignments["q"], expected_q, rtol=1e-12)
    np.testing.assert_allclose(table.alignments["readout"], means["head"], rtol=1e-12)
    assert table.layers == {"q": 3, "readout": 1} and table.source["measurements"] == 4


def test_table_refuses_what_it_cannot_read(tmp_path) -> None:
    with pytest.raises(mc.MaxPError, match="unknown layer kinds \\['attention'\\]"):
        AlignmentTable({"attention": (0.5, 0.5, 0.5)})
    with pytest.raises(mc.MaxPError, match=r"alignment table\[.q.\].*1\.5"):
        AlignmentTable({"q": (1.5, 0.5, 0.5)})
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(mc.MaxPError, match="is not an alignment table"):
        AlignmentTable.read(tmp_path / "bad.json")
    run = MetricsRun({"fc": "hidden"}, [_record(1, 0, {"fc": (0.5, 0.5, 0.5)})])
    with pytest.raises(mc.MaxPError, match="no alignment was measured after step"):
        measure_table(run)
    with pytest.raises(mc.MaxPError, match=r"fraction = 0\.0 must lie in"):
        measure_table(run, fraction=0.0)


def test_overrides_match_names_suffixes_and_roles_and_warn_on_uncovered_layers() -> None:
    layers = [("params/blocks/q[0]", "hidden"), ("params/blocks/q[1]", "hidden"), ("params/head", "readout")]
    fixed = resolve_overrides(layers, {"q": (0.7, 0.5, 0.7), "readout": (0.6, 0.5, 0.6)})
    assert fixed == {0: (0.7, 0.5, 0.7), 1: (0.7, 0.5, 0.7), 2: (0.6, 0.5, 0.6)}
    with pytest.raises(mc.MaxPError, match="keys \\['k'\\] match no layer"):
        resolve_overrides(layers, {"k": (0.7, 0.5, 0.7)})
    with pytest.warns(mc.MaxPWarning, match="no entry for layers \\['params/head \\(readout\\)'\\]"):
        assert resolve_overrides(layers, AlignmentTable({"q": (0.7, 0.5, 0.7)})) == {
            0: (0.7, 0.5, 0.7),
            1: (0.7, 0.5, 0.7),
        }


def test_metrics_log_writes_missing_values_as_null_and_reads_them_back(tmp_path) -> None:
    path = tmp_path / "run.jsonl"
    with MetricsLog(path, {"fc": "hidden"}) as log:
        log.write({"maxp/step": 1, "maxp/alpha/fc": float("nan")}, loss=np.float32(2.5))
    assert json.loads(path.read_text().splitlines()[1]) == {
        "maxp/step": 1.0,
        "maxp/alpha/fc": None,
        "loss": 2.5,
    }
    run = read_metrics(path)
    assert run.layers == {"fc": "hidden"} and math.isnan(run.records[0]["maxp/alpha/fc"])
    (tmp_path / "plain.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(mc.MaxPError, match="does not start with a maxp metrics header"):
        read_metrics(tmp_path / "plain.jsonl")
    (tmp_path / "nolayers.jsonl").write_text('{"maxp_metrics": 1}\n')
    with pytest.raises(mc.MaxPError, match="the header must name the layers"):
        read_metrics(tmp_path / "nolayers.jsonl")
    (tmp_path / "text.jsonl").write_text('{"maxp_metrics": 1, "layers": {}}\n{"loss": "high"}\n')
    with pytest.raises(
        mc.MaxPError, match=r"text.jsonl line 2: loss must be a number or null, got str .high."
    ):
        read_metrics(tmp_path / "text.jsonl")
    with pytest.raises(mc.MaxPError, match="layer 'fc': unknown role 'middle'"):
        MetricsLog(tmp_path / "bad.jsonl", {"fc": "middle"})
    with pytest.raises(mc.MaxPError, match="unknown per-layer metric 'lrr'"):
        metrics_record(["fc"], {"lrr": [1.0]}, {})


def test_measure_only_resolver_keeps_c_and_smooths_as_a_dynamic_one() -> None:
    solve = lambda al: 1.0 - al[:, 0]  # noqa: E731
    kwargs = {"alignment_ema": 0.5, "overrides": {2: (0.6, 0.5, 0.6)}}
    dynamic = mc.Resolver(["a", "b", "c"], solve, **kwargs)
    passive = mc.Resolver(["a", "b", "c"], solve, measure_only=True, **kwargs)
    previous = np.full((3, 3), 0.5)
    measured = np.array([[0.9, 0.5, 0.8], [np.nan, 0.6, 0.7], [0.8, 0.8, 0.8]])
    args = {"measured": measured, "previous": previous, "c_prev": np.zeros(3), "nonfinite": np.zeros(3, bool)}
    with pytest.warns(mc.MaxPWarning, match="layer 'b'"):
        moved = dynamic(**args, failures=0)
    with pytest.warns(mc.MaxPWarning, match="layer 'b'"):
        kept = passive(**args, failures=0)
    np.testing.assert_array_equal(kept.alignment, moved.alignment)
    np.testing.assert_array_equal(kept.alignment[0], [0.7, 0.5, 0.65])  # halfway, by hand
    assert kept.c.tolist() == [0.0, 0.0, 0.0] and moved.c.tolist() != [0.0, 0.0, 0.0]
    assert kept.missing == moved.missing == 1


def test_cli_builds_a_table_from_a_log_prints_its_c_and_plots(tmp_path, capsys) -> None:
    path = tmp_path / "run.jsonl"
    with MetricsLog(path, {"emb": "embedding", "mid": "hidden", "out": "readout"}) as log:
        for step in range(1, 11):
            triples = {"emb": (1.0, 0.5, 1.0), "mid": (0.7, 0.5, 0.6), "out": (0.6, 0.5, 0.55)}
            log.write(_record(step, step, triples), loss=3.0 / step)
    assert main(["alignments", str(path), "--out", str(tmp_path / "t.json")]) == 0
    table = AlignmentTable.read(tmp_path / "t.json")
    assert table.alignments == {"hidden": (0.7, 0.5, 0.6), "readout": (0.6, 0.5, 0.55)}
    capsys.readouterr()
    assert main(["table", "--alignments", str(tmp_path / "t.json"), "--layers", "3"]) == 0
    printed = capsys.readouterr().out
    expected = mc.StabilityLP(
        mc.chain(3, alignment=[(1.0, 0.5, 1.0), (0.7, 0.5, 0.6), (0.6, 0.5, 0.55)]),
        "adam",
        reference_alignment=(1.0, 0.5, 1.0),
    ).solve()
    last_columns = [line.split()[-1] for line in printed.splitlines()[3:]]
    assert [float(v) for v in last_columns] == pytest.approx(list(expected.c.values()), abs=5e-5)
    pytest.importorskip("matplotlib")
    assert main(["plot", str(path), "--out", str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "run.png").stat().st_size > 1000
    assert main(["alignments", str(tmp_path / "missing.jsonl")]) == 2
