"""Per-step metrics: one record format for both adapters, written and read as JSON lines.

A record is a flat ``{key: float}`` dict any logger takes (wandb, TensorBoard, MLflow):

* ``maxp/<field>/<layer>`` for each layer and field of :data:`LAYER_FIELDS`: the rate the
  layer trains at (``lr``), its factor ``width^-c`` (``lr_factor``), ``c`` and the
  alignments ``alpha``, ``omega``, ``u`` in use (the preset's before any measurement);
* ``maxp/<counter>`` for :data:`COUNTERS`: steps taken, successful re-solves (measurements
  in measure-only mode), failed ones, missing measured numbers and the last LP solve's
  wall time in seconds;
* whatever the caller adds (``loss=...``), under its own name.

:class:`MetricsLog` writes records to a JSONL file whose first line names the layers and
their roles, so that :func:`~maxp_core.tables.measure_table` and the ``plot`` command can
read a run back without the model. A missing value (NaN) is written as ``null``: missing,
not zero.

Examples:
  >>> import io, tempfile, os
  >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
  >>> with MetricsLog(path, {"fc": "hidden"}) as log:
  ...     _ = log.write({"maxp/step": 1, "maxp/alpha/fc": 0.7}, loss=2.5)
  >>> run = read_metrics(path)
  >>> run.layers, run.records[0]["loss"], run.series("alpha", "fc")
  ({'fc': 'hidden'}, 2.5, ([1.0], [0.7]))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.jsonfiles import append_line, open_for_writing, parse_json, read_text
from maxp_core.resolve import warn_user
from maxp_core.roles import Role

#: Per-layer fields of a record, each under ``maxp/<field>/<layer>``.
LAYER_FIELDS: tuple[str, ...] = ("lr", "lr_factor", "c", "alpha", "omega", "u")
#: Run-wide counters, each under ``maxp/<counter>``.
COUNTERS: tuple[str, ...] = ("step", "solves", "failures", "missing", "solve_seconds")
#: First key of a metrics file's header line.
HEADER_KEY = "maxp_metrics"
FORMAT_VERSION = 1
_LOG = "metrics log"


def metrics_record(
    layers: Sequence[str], columns: Mapping[str, Sequence[Any]], counters: Mapping[str, Any]
) -> dict[str, float]:
    """The flat record of one step: ``columns[field][k]`` of layer ``layers[k]``, and the counters.

    Both adapters build their ``metrics()`` with this function, so the keys agree.

    Examples:
      >>> metrics_record(["fc"], {"c": [1.0]}, {"step": 3})
      {'maxp/c/fc': 1.0, 'maxp/step': 3.0}
    """
    out: dict[str, float] = {}
    for field, values in columns.items():
        if field not in LAYER_FIELDS:
            raise MaxPError(f"unknown per-layer metric {field!r}; expected one of {list(LAYER_FIELDS)}")
        if len(values) != len(layers):
            raise MaxPError(f"metric {field!r} has {len(values)} values for {len(layers)} layers")
        for name, value in zip(layers, values, strict=True):
            out[f"maxp/{field}/{name}"] = float(value)
    for counter, value in counters.items():
        if counter not in COUNTERS:
            raise MaxPError(f"unknown counter {counter!r}; expected one of {list(COUNTERS)}")
        out[f"maxp/{counter}"] = float(value)
    return out


def record_value(key: str, value: Any, where: str = "metrics") -> float | None:
    """A record value as a JSON number, ``None`` for NaN or ``null`` (missing, not zero).

    Anything maxP cannot have logged is refused, naming ``where`` and the key: a boolean or
    text, an infinite ``maxp/`` number, an alignment outside ``[0, 1]``, a negative rate or
    factor (a schedule may bring the rate to 0), an exponent beyond
    ``validate.EXPONENT_BOUND``, a negative counter. The caller's own keys (``loss``) may be
    infinite: a diverged loss is written as ``Infinity`` and read back as such.

    Examples:
      >>> record_value("maxp/alpha/fc", 0.7), record_value("maxp/alpha/fc", float("nan"))
      (0.7, None)
      >>> record_value("maxp/alpha/fc", 5.0, "run.jsonl line 3")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: run.jsonl line 3: maxp/alpha/fc = 5.0 is out of range; ...
    """
    if value is None:
        return None
    if isinstance(value, bool | np.bool_ | str | bytes):
        raise MaxPError(
            f"{where}: {key} must be a number or null, got {type(value).__name__} {value!r}"[:300]
        )
    try:
        number = float(value)
    except OverflowError:
        raise MaxPError(f"{where}: {key} is an integer too large to be a metric") from None
    except (TypeError, ValueError):
        raise MaxPError(
            f"{where}: {key} must be a number (or a 0-d array), got {type(value).__name__}"
        ) from None
    if math.isnan(number):
        return None
    if not math.isfinite(number):
        if not key.startswith("maxp/"):
            return number  # the caller's own values: a diverged loss is a finding, kept as is
        raise MaxPError(f"{where}: {key} = {number} is not finite; a missing value is NaN (written as null)")
    _check_range(key, number, where)
    return number


def _check_range(key: str, number: float, where: str) -> None:
    """maxP's own fields by their meaning, with :mod:`maxp_core.validate`'s checks."""
    parts = key.split("/")
    if parts[0] != "maxp" or len(parts) < 2:
        return
    field, named = parts[1], f"{where}: {key}"
    per_layer = len(parts) >= 3
    if per_layer and field in validate.ALIGNMENT_FIELDS:
        validate.alignment_value(number, named)
    elif (per_layer and field in ("lr", "lr_factor")) or (not per_layer and field in COUNTERS):
        validate.non_negative_number(number, named)  # a schedule may bring a rate to 0
    elif per_layer and field == "c" and abs(number) > validate.EXPONENT_BOUND:
        raise MaxPError(
            f"{named} = {number} is out of range; exponents lie in "
            f"[-{validate.EXPONENT_BOUND:g}, {validate.EXPONENT_BOUND:g}]"
        )


class MetricsLog:
    """Append metrics records to a JSONL file (a context manager).

    Args:
      path: the file; it is created (its folder too) and overwritten.
      layers: ``{layer name: role}`` of the run, written as the first line.

    Every record is checked as :func:`record_value` checks values, flushed as it is
    written, and a file that cannot be written, or is deleted during the run, raises
    :class:`MaxPError` instead of losing records. The adapters make one for you:
    ``Parametrization.metrics_log(path)`` and ``maxp_jax.metrics_log(path, spec)``.
    """

    def __init__(self, path: str | Path, layers: Mapping[str, str]) -> None:
        self.path = Path(path)
        if not isinstance(layers, Mapping):
            raise MaxPError(f"MetricsLog: layers must be a mapping {{name: role}}, got {layers!r}")
        self.layers = {str(name): Role.parse(role, layer=str(name)).value for name, role in layers.items()}
        self._file: TextIO | None = open_for_writing(self.path, _LOG)
        header = json.dumps({HEADER_KEY: FORMAT_VERSION, "layers": self.layers})
        append_line(self._file, header, self.path, _LOG)

    def write(self, record: Mapping[str, Any], **extra: Any) -> dict[str, float | None]:
        """Write ``record`` plus ``extra`` (``loss=...``) as one line; return what was written."""
        if self._file is None:
            raise MaxPError(f"the metrics log {self.path} is closed")
        line = {str(key): record_value(str(key), value) for key, value in {**record, **extra}.items()}
        append_line(self._file, json.dumps(line), self.path, _LOG)
        return line

    def close(self) -> None:
        """Close the file; a closed log refuses further writes."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class MetricsRun:
    """A metrics file read back: the layers with their roles, and the records in order."""

    layers: dict[str, str]
    records: list[dict[str, float]]

    def series(self, field: str, layer: str | None = None) -> tuple[list[float], list[float]]:
        """``(steps, values)`` of ``maxp/<field>/<layer>`` (or of the record key ``field`` when
        ``layer`` is None), over the records that hold it."""
        key = field if layer is None else f"maxp/{field}/{layer}"
        pairs = [(r.get("maxp/step", float(k)), r[key]) for k, r in enumerate(self.records) if key in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def read_metrics(path: str | Path) -> MetricsRun:
    """Read a file written by :class:`MetricsLog`.

    Every value is checked as :func:`record_value` checks it. A last line cut short (a run
    stopped while writing it: no newline after it, not JSON) is skipped with a warning
    naming it; any other broken line raises naming its line number.

    Raises:
      MaxPError: the file cannot be read, is not UTF-8, its first line is not a maxp
        metrics header, or a line holds something a run cannot have logged.
    """
    path = Path(path)
    text = read_text(path, "metrics file")
    lines = text.split("\n")
    numbered = [(k + 1, line) for k, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise MaxPError(f"{path} is empty; a metrics file starts with a header line from MetricsLog")
    parsed: list[tuple[int, Any]] = []
    for number, line in numbered:
        where = f"{path} line {number}"
        cut_short = number == len(lines) and not text.endswith("\n") and len(numbered) > 1
        try:
            parsed.append((number, parse_json(line, where)))
        except MaxPError:
            if not cut_short:
                raise
            warn_user(f"{where} is cut short (the run stopped while writing it); it is skipped")
    header_line, header = parsed[0]
    if not isinstance(header, dict) or HEADER_KEY not in header:
        raise MaxPError(
            f"{path} does not start with a maxp metrics header; write it with MetricsLog "
            "(Parametrization.metrics_log or maxp_jax.metrics_log)"
        )
    layers = header.get("layers")
    if not isinstance(layers, dict):
        raise MaxPError(
            f"{path} line {header_line}: the header must name the layers, {{'layers': {{name: role}}}}"
        )
    roles = {}
    for name, role in layers.items():
        try:
            roles[str(name)] = Role.parse(role, layer=str(name)).value
        except MaxPError as err:
            raise MaxPError(f"{path} line {header_line}: {err}") from None
    records = []
    for number, entry in parsed[1:]:
        where = f"{path} line {number}"
        if not isinstance(entry, dict):
            raise MaxPError(f"{where} must be an object {{key: number or null}}, got {type(entry).__name__}")
        values = {str(k): record_value(str(k), v, where) for k, v in entry.items()}
        records.append({k: (np.nan if v is None else v) for k, v in values.items()})
    return MetricsRun(roles, records)


def plot_metrics(run: MetricsRun, out: str | Path, title: str | None = None) -> Path:
    """Draw per-layer learning rates and alignments against the step into a PNG.

    Panels: the learning rate of every layer (log scale), then ``alpha``, ``omega`` and
    ``u`` of every layer but the embeddings (whose alignment is not measured), and the
    record key ``loss`` when the records hold one.

    Raises:
      MaxPError: matplotlib is not installed, or the records hold no per-layer values.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MaxPError("plotting needs matplotlib: pip install 'maxp[plot]'") from None
    fields = [f for f in ("lr", "alpha", "omega", "u") if any(run.series(f, name)[0] for name in run.layers)]
    if not fields:
        raise MaxPError("the metrics records hold no per-layer learning rates or alignments to draw")
    has_loss = bool(run.series("loss")[0])
    panels = fields + (["loss"] if has_loss else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "loss":
            ax.plot(*run.series("loss"), color="black")
            ax.set_yscale("log")
        else:
            for name, role in run.layers.items():
                if panel != "lr" and role == Role.EMBEDDING.value:
                    continue
                steps, values = run.series(panel, name)
                if steps:
                    ax.plot(steps, values, label=name, linewidth=1)
            if panel == "lr":
                ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("step")
    if len(run.layers) <= 12:
        axes[0][0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = _figure_path(Path(out), fig.canvas.get_supported_filetypes())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as err:
        raise MaxPError(f"cannot write the plot {out}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return out


def _figure_path(out: Path, formats: Mapping[str, str]) -> Path:
    """Where the figure goes: ``metrics.png`` in a folder, ``.png`` added to a bare name."""
    if out.is_dir():
        return out / "metrics.png"
    if not out.suffix:
        return out.with_suffix(".png")
    if out.suffix.lstrip(".").lower() not in formats:
        raise MaxPError(f"cannot draw {out}: {out.suffix!r} is no image format; use one of {sorted(formats)}")
    return out
