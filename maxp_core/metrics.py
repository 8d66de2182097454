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

Example:
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

from maxp_core.errors import MaxPError
from maxp_core.roles import Role

#: Per-layer fields of a record, each under ``maxp/<field>/<layer>``.
LAYER_FIELDS: tuple[str, ...] = ("lr", "lr_factor", "c", "alpha", "omega", "u")
#: Run-wide counters, each under ``maxp/<counter>``.
COUNTERS: tuple[str, ...] = ("step", "solves", "failures", "missing", "solve_seconds")
#: First key of a metrics file's header line.
HEADER_KEY = "maxp_metrics"
FORMAT_VERSION = 1


def metrics_record(
    layers: Sequence[str], columns: Mapping[str, Sequence[Any]], counters: Mapping[str, Any]
) -> dict[str, float]:
    """The flat record of one step: ``columns[field][k]`` of layer ``layers[k]``, and the counters.

    Both adapters build their ``metrics()`` with this function, so the keys agree.

    Example:
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


def _plain(value: Any, key: str) -> float | None:
    """A record value as a JSON number, ``None`` for NaN (missing, not zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MaxPError(
            f"metrics value {key!r} must be a number (or a 0-d array), got {type(value).__name__}"
        ) from None
    return None if math.isnan(number) else number


class MetricsLog:
    """Append metrics records to a JSONL file (a context manager).

    Args:
      path: the file; it is created (its folder too) and overwritten.
      layers: ``{layer name: role}`` of the run, written as the first line.

    The adapters make one for you: ``Parametrization.metrics_log(path)`` and
    ``maxp_jax.metrics_log(path, spec)``.
    """

    def __init__(self, path: str | Path, layers: Mapping[str, str]) -> None:
        self.path = Path(path)
        if not isinstance(layers, Mapping):
            raise MaxPError(f"MetricsLog: layers must be a mapping {{name: role}}, got {layers!r}")
        self.layers = {str(name): Role.parse(role, layer=str(name)).value for name, role in layers.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("w", encoding="utf-8")
        self._file.write(json.dumps({HEADER_KEY: FORMAT_VERSION, "layers": self.layers}) + "\n")

    def write(self, record: Mapping[str, Any], **extra: Any) -> dict[str, float | None]:
        """Write ``record`` plus ``extra`` (``loss=...``) as one line; return what was written."""
        if self._file is None:
            raise MaxPError(f"the metrics log {self.path} is closed")
        line = {key: _plain(value, key) for key, value in {**record, **extra}.items()}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        return line

    def close(self) -> None:
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

    Raises:
      MaxPError: the file cannot be read, or its first line is not a maxp metrics header.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise MaxPError(f"cannot read the metrics file {path}: {err.strerror}") from None
    try:
        parsed = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as err:
        raise MaxPError(f"{path} is not a JSON-lines metrics file: {err}") from None
    if not parsed or not isinstance(parsed[0], dict) or HEADER_KEY not in parsed[0]:
        raise MaxPError(
            f"{path} does not start with a maxp metrics header; write it with MetricsLog "
            "(Parametrization.metrics_log or maxp_jax.metrics_log)"
        )
    layers = parsed[0].get("layers")
    if not isinstance(layers, dict):
        raise MaxPError(f"{path}: the header must name the layers, {{'layers': {{name: role}}}}")
    try:
        records = [{k: (np.nan if v is None else float(v)) for k, v in r.items()} for r in parsed[1:]]
    except (AttributeError, TypeError, ValueError):
        raise MaxPError(f"{path}: every line after the header must be an object of numbers") from None
    return MetricsRun(dict(layers), records)


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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
