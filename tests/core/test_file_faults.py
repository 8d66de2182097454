"""Files maxp reads and writes, corrupt, truncated, foreign and huge: a clear error or the right
behaviour with a warning, never a number clipped into range or a raw exception.

Each case names what the message must say: the file, the line, the key and the value.
"""

import json
import os
import warnings

import numpy as np
import pytest

import maxp_core as mc
from maxp_core.cli import main
from maxp_core.metrics import MetricsLog, MetricsRun, read_metrics
from maxp_core.tables import AlignmentTable, measure_table

HEADER = '{"maxp_metrics": 1, "layers": {"fc": "hidden", "out": "readout"}}'


def record(step: int, **values) -> str:
    base = {"maxp/step": step, "maxp/solves": step, "maxp/alpha/fc": 0.7, "maxp/omega/fc": 0.5}
    return json.dumps({**base, **values})


def write(tmp_path, content, name="run.jsonl"):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- metrics files ------------------------------------------------------------------------------

BAD_LOGS = [
    ("not utf-8", HEADER.encode() + b"\n\xff\xfe{}\n", r"run.jsonl is not UTF-8 text \(byte 6\d:"),
    ("empty", "", r"run.jsonl is empty; a metrics file starts with a header"),
    ("only blank lines", "\n\n  \n", r"run.jsonl is empty"),
    ("header not json", "{maxp\n" + record(1) + "\n", r"run.jsonl line 1 is not valid JSON"),
    (
        "broken middle line",
        f"{HEADER}\n{record(1)}\n{{oops\n{record(3)}\n",
        r"run.jsonl line 3 is not valid JSON",
    ),
    ("broken line after blanks", f"{HEADER}\n\n\n{record(1)}\n[1,\n", r"run.jsonl line 5 is not valid JSON"),
    (
        "broken last line with its newline",
        f'{HEADER}\n{record(1)}\n{{"maxp/st\n',
        r"run.jsonl line 3 is not valid JSON",
    ),
    (
        "Infinity alignment",
        f'{HEADER}\n{{"maxp/alpha/fc": Infinity}}\n',
        r"line 2: maxp/alpha/fc = inf is not finite",
    ),
    (
        "Infinity token",
        f'{HEADER}\n{{"maxp/lr/fc": Infinity}}\n',
        r"line 2: maxp/lr/fc = inf is not finite",
    ),
    ("-Infinity token", f'{HEADER}\n{{"maxp/c/fc": -Infinity}}\n', r"line 2: maxp/c/fc = -inf is not finite"),
    (
        "1e400 overflows to inf",
        f'{HEADER}\n{{"maxp/u/fc": 1e400}}\n',
        r"line 2: maxp/u/fc = inf is not finite",
    ),
    (
        "integer of 5000 digits",
        f'{HEADER}\n{{"loss": {"9" * 5000}}}\n',
        r"line 2 holds a value that cannot be read",
    ),
    ("deep nesting", HEADER + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", r"line 2 is nested too deeply"),
    (
        "a record that is a list",
        f"{HEADER}\n[1, 2]\n",
        r"line 2 must be an object \{key: number or null\}, got list",
    ),
    ("a record that is a number", f"{HEADER}\n3\n", r"line 2 must be an object .* got int"),
    (
        "alpha 5.0",
        f"{HEADER}\n{record(1, **{'maxp/alpha/fc': 5.0})}\n",
        r"line 2: maxp/alpha/fc = 5.0 is out of range; an alignment lies in \[0, 1\]",
    ),
    (
        "alpha -3",
        f"{HEADER}\n{record(1, **{'maxp/alpha/fc': -3})}\n",
        r"line 2: maxp/alpha/fc = -3.0 is out of range",
    ),
    (
        "omega 1e6",
        f"{HEADER}\n{record(1, **{'maxp/omega/out': 1e6})}\n",
        r"maxp/omega/out = 1000000.0 is out of range",
    ),
    (
        "u true",
        f"{HEADER}\n{record(1, **{'maxp/u/fc': True})}\n",
        r"maxp/u/fc must be a number or null, got bool True",
    ),
    (
        "alpha as text",
        f"{HEADER}\n{record(1, **{'maxp/alpha/fc': '0.5'})}\n",
        r"maxp/alpha/fc must be a number or null, got str",
    ),
    (
        "alpha as an object",
        f"{HEADER}\n{record(1, **{'maxp/alpha/fc': {'v': 1}})}\n",
        r"maxp/alpha/fc must be a number \(or a 0-d array\), got dict",
    ),
    ("lr negative", f"{HEADER}\n{record(1, **{'maxp/lr/fc': -0.1})}\n", r"maxp/lr/fc = -0.1 must be >= 0"),
    (
        "lr factor negative",
        f"{HEADER}\n{record(1, **{'maxp/lr_factor/out': -2})}\n",
        r"maxp/lr_factor/out = -2.0 must be >= 0",
    ),
    (
        "c 1e6",
        f"{HEADER}\n{record(1, **{'maxp/c/fc': 1e6})}\n",
        r"maxp/c/fc = 1000000.0 is out of range; exponents lie",
    ),
    ("negative step", f"{HEADER}\n{record(-1)}\n", r"maxp/step = -1.0 must be >= 0"),
    (
        "negative failures",
        f"{HEADER}\n{record(1, **{'maxp/failures': -2})}\n",
        r"maxp/failures = -2.0 must be >= 0",
    ),
    (
        "header layers a list",
        '{"maxp_metrics": 1, "layers": ["fc"]}\n',
        r"line 1: the header must name the layers",
    ),
    (
        "header role unknown",
        '{"maxp_metrics": 1, "layers": {"fc": "middle"}}\n',
        r"line 1: layer 'fc': unknown role 'middle'",
    ),
    ("header role a number", '{"maxp_metrics": 1, "layers": {"fc": 3}}\n', r"line 1: layer 'fc'"),
    ("header is a list", "[1]\n" + record(1) + "\n", r"does not start with a maxp metrics header"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in BAD_LOGS], ids=[c[0] for c in BAD_LOGS])
def test_a_bad_metrics_file_is_refused_by_line_and_key(tmp_path, content, message) -> None:
    path = write(tmp_path, content)
    with pytest.raises(mc.MaxPError, match=message):
        read_metrics(path)
    # The command line says the same in one line and exits 2.
    assert main(["alignments", str(path)]) == 2


def test_a_metrics_path_that_is_a_folder_is_refused(tmp_path) -> None:
    with pytest.raises(mc.MaxPError, match=r"cannot read the metrics file .*: it is a folder, not a file"):
        read_metrics(tmp_path)


def test_a_last_line_cut_short_is_skipped_with_a_warning_naming_it(tmp_path) -> None:
    path = write(tmp_path, f'{HEADER}\n{record(1)}\n\n{record(2)}\n{{"maxp/step": 3, "maxp/al')
    with pytest.warns(mc.MaxPWarning, match=r"run.jsonl line 5 is cut short .* it is skipped"):
        run = read_metrics(path)
    assert [r["maxp/step"] for r in run.records] == [1.0, 2.0]


def test_blank_lines_keep_the_line_numbers_of_the_file(tmp_path) -> None:
    path = write(tmp_path, f"\n{HEADER}\n\n{record(1)}\n\n{record(2, **{'maxp/alpha/fc': 2.0})}\n")
    with pytest.raises(mc.MaxPError, match=r"run.jsonl line 6: maxp/alpha/fc = 2.0"):
        read_metrics(path)


# --- writing metrics -------------------------------------------------------------------------------

BAD_VALUES = [
    ({"maxp/u/fc": float("inf")}, r"maxp/u/fc = inf is not finite; a missing value is NaN"),
    ({"maxp/c/fc": float("-inf")}, r"maxp/c/fc = -inf is not finite"),
    ({"maxp/alpha/fc": np.float32(np.inf)}, r"maxp/alpha/fc = inf is not finite"),
    ({"maxp/alpha/fc": 1.5}, r"maxp/alpha/fc = 1.5 is out of range"),
    ({"maxp/u/fc": -0.1}, r"maxp/u/fc = -0.1 is out of range"),
    ({"maxp/lr/fc": -1e-3}, r"maxp/lr/fc = -0.001 must be >= 0"),
    ({"maxp/c/fc": 1e9}, r"maxp/c/fc = 1000000000.0 is out of range"),
    ({"maxp/solves": -1}, r"maxp/solves = -1.0 must be >= 0"),
    ({"loss": True}, r"loss must be a number or null, got bool True"),
    ({"loss": np.bool_(False)}, r"loss must be a number or null, got bool"),
    ({"loss": "2.5"}, r"loss must be a number or null, got str '2.5'"),
    ({"loss": [1.0]}, r"loss must be a number \(or a 0-d array\), got list"),
    ({"loss": 10**400}, r"loss is an integer too large to be a metric"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m.split(" ")[0] for _, m in BAD_VALUES])
def test_metrics_log_refuses_a_value_no_run_can_have(tmp_path, values, message) -> None:
    with MetricsLog(tmp_path / "run.jsonl", {"fc": "hidden"}) as log:
        with pytest.raises(mc.MaxPError, match=message):
            log.write({"maxp/step": 1}, **values)
        log.write({"maxp/step": 2, "maxp/alpha/fc": float("nan")}, loss=None)  # missing is fine
    run = read_metrics(tmp_path / "run.jsonl")
    assert len(run.records) == 1 and np.isnan(run.records[0]["maxp/alpha/fc"])


def test_metrics_log_to_a_folder_or_under_a_file_is_refused(tmp_path) -> None:
    with pytest.raises(mc.MaxPError, match=r"cannot write the metrics log .*: Is a directory"):
        MetricsLog(tmp_path, {"fc": "hidden"})
    write(tmp_path, "x", name="plain")
    with pytest.raises(mc.MaxPError, match=r"cannot write the metrics log .*plain/run.jsonl"):
        MetricsLog(tmp_path / "plain" / "run.jsonl", {"fc": "hidden"})


def test_a_metrics_log_deleted_during_the_run_fails_loudly(tmp_path) -> None:
    log = MetricsLog(tmp_path / "run.jsonl", {"fc": "hidden"})
    log.write({"maxp/step": 1})
    os.remove(tmp_path / "run.jsonl")
    with pytest.raises(mc.MaxPError, match=r"run.jsonl was deleted while it was being written"):
        log.write({"maxp/step": 2})
    log.close()
    with pytest.raises(mc.MaxPError, match=r"is closed"):
        log.write({"maxp/step": 3})


# --- alignment tables -------------------------------------------------------------------------------


def table_json(**entry) -> str:
    hidden = {"alpha": 0.7, "omega": 0.5, "u": 0.6, "layers": 2, **entry}
    return json.dumps({"format": "maxp-alignment-table", "version": 1, "alignments": {"hidden": hidden}})


BAD_TABLES = [
    ("not utf-8", b'{"format": "\xff"}', r"t.json is not UTF-8 text \(byte 12"),
    ("not json", "{format", r"t.json is not valid JSON: .* \(line 1, column 2\)"),
    (
        "NaN token",
        table_json().replace("0.7", "NaN"),
        r"t.json: alignments\['hidden'\]: alpha = nan is not a finite",
    ),
    (
        "integer of 5000 digits",
        table_json().replace("0.7", "7" * 5000),
        r"t.json holds a value that cannot be read",
    ),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, r"t.json is nested too deeply"),
    ("alpha 5.0", table_json(alpha=5.0), r"t.json: alignments\['hidden'\]: alpha = 5.0 is out of range"),
    ("alpha -3", table_json(alpha=-3), r"alpha = -3 is out of range"),
    ("alpha true", table_json(alpha=True), r"alpha must be a real number, got bool True"),
    ("alpha 1e400", table_json().replace("0.7", "1e400"), r"alpha = inf is not a finite number"),
    ("omega as text", table_json(omega="0.5"), r"omega must be a real number, got str"),
    (
        "layers 2.7",
        table_json(layers=2.7),
        r"t.json: alignments\['hidden'\].layers must be an integer >= 0, got float 2.7",
    ),
    ("layers -1", table_json(layers=-1), r"layers must be an integer >= 0, got -1"),
    (
        "source a list",
        table_json()[:-1] + ', "source": [1]}',
        r"t.json: 'source' must be an object of facts, got list",
    ),
    ("unknown kind", table_json().replace('"hidden"', '"middle"'), r"unknown layer kinds \['middle'\]"),
    ("foreign json", '{"a": 1}', r"t.json is not an alignment table"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in BAD_TABLES], ids=[c[0] for c in BAD_TABLES])
def test_a_bad_alignment_table_file_is_refused_by_name(tmp_path, content, message) -> None:
    path = write(tmp_path, content, name="t.json")
    with pytest.raises(mc.MaxPError, match=message):
        AlignmentTable.read(path)
    assert main(["table", "--alignments", str(path), "--layers", "3"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"layers": {"hidden": 2.7}},
            r"alignment table: layers\['hidden'\] must be an integer >= 0, got float 2.7",
        ),
        ({"layers": {"hidden": "2"}}, r"layers\['hidden'\] must be an integer"),
        ({"layers": [2]}, r"alignment table: layers must be a mapping"),
        ({"source": "run 3"}, r"alignment table: source must be a mapping of facts"),
    ],
)
def test_an_alignment_table_built_in_code_checks_its_counts_and_source(kwargs, message) -> None:
    with pytest.raises(mc.MaxPError, match=message):
        AlignmentTable({"hidden": (0.7, 0.5, 0.6)}, **kwargs)


def test_an_alignment_table_that_cannot_be_written_says_why(tmp_path) -> None:
    table = AlignmentTable({"hidden": (0.7, 0.5, 0.6)})
    with pytest.raises(mc.MaxPError, match=r"cannot write the alignment table .*: Is a directory"):
        table.write(tmp_path)
    odd = AlignmentTable({"hidden": (0.7, 0.5, 0.6)}, source={"width": float("nan")})
    with pytest.raises(mc.MaxPError, match=r"source cannot be written as JSON"):
        odd.write(tmp_path / "t.json")


# --- tables measured from runs built in code ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5.0, r"the record of step 2.0: maxp/alpha/fc = 5.0 is out of range"),
        (-3.0, r"maxp/alpha/fc = -3.0 is out of range"),
        (float("inf"), r"maxp/alpha/fc = inf is not finite"),
        (True, r"maxp/alpha/fc must be a number or null, got bool"),
    ],
)
def test_measure_table_refuses_a_corrupt_alignment_instead_of_clipping_it(value, message) -> None:
    records = [
        {"maxp/step": 1.0, "maxp/solves": 1.0, "maxp/alpha/fc": 0.7, "maxp/omega/fc": 0.5, "maxp/u/fc": 0.6},
        {
            "maxp/step": 2.0,
            "maxp/solves": 2.0,
            "maxp/alpha/fc": value,
            "maxp/omega/fc": 0.5,
            "maxp/u/fc": 0.6,
        },
    ]
    with pytest.raises(mc.MaxPError, match=message):
        measure_table(MetricsRun({"fc": "hidden"}, records), fraction=1.0)


def test_the_cli_names_the_file_of_a_non_utf8_log(tmp_path, capsys) -> None:
    path = write(tmp_path, HEADER.encode() + b"\n\x80\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["alignments", str(path)]) == 2
    err = capsys.readouterr().err
    assert "run.jsonl is not UTF-8 text" in err and "UnicodeDecodeError" not in err


def test_a_nan_token_in_a_log_reads_as_missing(tmp_path) -> None:
    """Python's json writes NaN for a missing float: read back, it is missing, not zero."""
    path = write(tmp_path, f'{HEADER}\n{{"maxp/step": 1, "maxp/alpha/fc": NaN}}\n')
    assert np.isnan(read_metrics(path).records[0]["maxp/alpha/fc"])


@pytest.mark.parametrize("reader", ["log", "table", "graph"])
def test_a_device_file_is_refused_before_it_is_read(reader) -> None:
    """/dev/zero never ends: reading it whole would exhaust memory."""
    with pytest.raises(mc.MaxPError, match=r"/dev/zero: it is a device or special file, not a file"):
        if reader == "log":
            read_metrics("/dev/zero")
        elif reader == "table":
            AlignmentTable.read("/dev/zero")
        else:
            from maxp_core.cli import _read_spec

            _read_spec("/dev/zero")


def _log(tmp_path):
    with MetricsLog(tmp_path / "run.jsonl", {"fc": "hidden"}) as log:
        for step in range(1, 4):
            log.write({"maxp/step": step, "maxp/lr/fc": 0.1, "maxp/alpha/fc": 0.7})
    return tmp_path / "run.jsonl"


def test_plot_prints_the_file_it_wrote(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    path = _log(tmp_path)
    (tmp_path / "figs").mkdir()
    for given, written in (("figs", "figs/metrics.png"), ("bare", "bare.png"), ("run.svg", "run.svg")):
        assert main(["plot", str(path), "--out", str(tmp_path / given)]) == 0
        assert capsys.readouterr().out.strip() == f"written to {tmp_path / written}"
        assert (tmp_path / written).stat().st_size > 1000
    assert main(["plot", str(path), "--out", str(tmp_path / "run.txt")]) == 2
    assert "'.txt' is no image format" in capsys.readouterr().err


def test_table_with_a_graph_but_no_alignments_is_refused(tmp_path, capsys) -> None:
    assert main(["table", "--graph", str(tmp_path / "g.json")]) == 2
    assert "give --alignments too" in capsys.readouterr().err


def _paths(tmp_path):
    (tmp_path / "folder").mkdir(exist_ok=True)
    write(tmp_path, b"\xff\xfe\x00", name="latin.json")
    write(tmp_path, "x", name="plain")
    return {
        "missing": (str(tmp_path / "nowhere.json"), r"No such file"),
        "folder": (str(tmp_path / "folder"), r"it is a folder, not a file"),
        "not utf-8": (str(tmp_path / "latin.json"), r"is not UTF-8 text"),
        "device": ("/dev/zero", r"it is a device or special file"),
        "under a file": (str(tmp_path / "plain" / "x.json"), r"Not a directory"),
    }


@pytest.mark.parametrize("command", ["solve", "graph", "depth", "alignments", "plot", "table --alignments"])
@pytest.mark.parametrize("kind", ["missing", "folder", "not utf-8", "device", "under a file"])
def test_every_command_names_a_bad_input_path_in_one_line(tmp_path, capsys, command, kind) -> None:
    path, message = _paths(tmp_path)[kind]
    words = [*command.split(), path]
    if command == "plot":
        words += ["--out", str(tmp_path / "p.png")]
    assert main(words) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and path in err, err
    assert __import__("re").search(message, err), err


@pytest.mark.parametrize("command", ["alignments", "plot"])
def test_an_output_under_a_file_is_named(tmp_path, capsys, command) -> None:
    pytest.importorskip("matplotlib")
    log = tmp_path / "run.jsonl"
    with MetricsLog(log, {"fc": "hidden", "out": "readout"}) as metrics:
        for step in range(1, 5):
            fields = {f"maxp/{f}/fc": 0.6 for f in ("alpha", "omega", "u")}
            metrics.write({"maxp/step": step, "maxp/solves": step, "maxp/lr/fc": 0.1, **fields})
    write(tmp_path, "x", name="plain")
    target = str(tmp_path / "plain" / "out.png")
    words = [command, str(log), "--out", target]
    assert main(words) == 2
    err = capsys.readouterr().err
    assert target in err and "cannot write" in err


def test_a_table_from_a_log_missing_one_field_names_it() -> None:
    records = [{"maxp/step": float(t), "maxp/solves": float(t), "maxp/alpha/fc": 0.7} for t in (1, 2)]
    with pytest.raises(mc.MaxPError, match=r"layer 'fc': omega, u never measured after step 0"):
        measure_table(MetricsRun({"fc": "hidden"}, records), fraction=1.0)


def test_a_diverged_loss_and_a_rate_scheduled_to_zero_are_logged_as_they_are(tmp_path) -> None:
    with MetricsLog(tmp_path / "run.jsonl", {"fc": "hidden"}) as log:
        log.write({"maxp/step": 0, "maxp/lr/fc": 0.0}, loss=float("inf"))  # warm-up from 0; diverged
    run = read_metrics(tmp_path / "run.jsonl")
    assert run.records[0]["maxp/lr/fc"] == 0.0 and run.records[0]["loss"] == float("inf")


def _good_graph_and_table(tmp_path):
    full = {"b": 0.5, "alpha": 1, "omega": 0.5, "u": 1}
    graph = {
        "nodes": [
            {"name": "x", "a": -0.5, "role": "embedding", **full},
            {"name": "h", "a": 0.0, "preds": ["x"], "role": "hidden", **full},
            {"name": "y", "a": 0.5, "preds": ["h"], "role": "readout", **full},
        ]
    }
    (tmp_path / "good.json").write_text(json.dumps(graph))
    triples = {"hidden": (0.7, 0.5, 0.6), "readout": (0.6, 0.5, 0.55)}
    AlignmentTable(triples, layers={"hidden": 1, "readout": 1}).write(tmp_path / "t.json")
    return tmp_path / "good.json", tmp_path / "t.json"


@pytest.mark.parametrize("option", ["depth --base-graph", "table --graph"])
@pytest.mark.parametrize("kind", ["missing", "folder", "not utf-8", "device", "under a file"])
def test_every_option_file_of_a_command_is_named_in_one_line(tmp_path, capsys, option, kind) -> None:
    """Files given to options are read as carefully as the command's own file."""
    graph, table = _good_graph_and_table(tmp_path)
    path, message = _paths(tmp_path)[kind]
    if option == "depth --base-graph":
        words = ["depth", str(graph), "--base-graph", path]
    else:
        words = ["table", "--alignments", str(table), "--graph", path]
    assert main(words) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and path in err, err
    assert __import__("re").search(message, err), err


def test_the_option_files_read_when_they_are_good(tmp_path, capsys) -> None:
    """The good files above are accepted: the refusals are about the bad path, not the command."""
    graph, table = _good_graph_and_table(tmp_path)
    assert main(["depth", str(graph), "--base-graph", str(graph)]) == 0
    assert main(["table", "--alignments", str(table), "--graph", str(graph)]) == 0
    assert "h" in capsys.readouterr().out
