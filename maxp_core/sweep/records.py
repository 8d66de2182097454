"""One run of a sweep: training it, stopping it when it diverges, and its JSON record.

A training function takes the run's config (``{"lr": ..., "width": ..., ...}``) and returns
or yields records, one per logged step: ``{"step": int, "loss": float, ...}`` plus any
numbers it likes (a maxp run's ``metrics()``: per-layer rates and alignments). A generator
is stopped as soon as the run diverges: its loss is NaN or infinite, or larger than
``divergence_factor`` times its first loss.

A run's file ``runs/<run id>.json`` holds ``id``, ``config``, ``status`` (``finished``,
``diverged`` or ``failed``), ``records``, ``final_loss`` (the mean loss of the last tenth
of the records; ``null`` unless finished), ``error`` (the traceback of a failed run),
``attempts``, ``seconds`` and ``worker`` (host and process).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from maxp_core.errors import MaxPError

TrainFn = Callable[[dict[str, Any]], Iterable[Mapping[str, Any]]]
STATUSES = ("finished", "diverged", "failed")
#: Statuses a second start of the sweep does not train again.
DONE = ("finished", "diverged")
#: Share of a run's records its final loss averages over.
FINAL_SHARE = 0.1


class RunFailed(Exception):
    """A training function raised; ``args[0]`` is its traceback. ``retry`` is False where
    another attempt cannot go otherwise (records that are not records)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class RecordError(MaxPError):
    """A training function's output is not records: trying again would give the same."""


def resolve_train(train: TrainFn | str) -> TrainFn:
    """``train`` itself, or the function a ``"package.module:function"`` string names."""
    if callable(train):
        return train
    if not isinstance(train, str) or train.count(":") != 1:
        raise MaxPError(
            f"the training function must be a callable or 'package.module:function', got {train!r}"
        )
    module_name, name = train.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        message = f"cannot import {module_name!r} for the training function {train!r}: {error}"
        raise MaxPError(message) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise MaxPError(f"{module_name!r} has no function {name!r} (from {train!r})")
    return function  # type: ignore[no-any-return]


def execute(
    train: TrainFn | str, run_id: str, config: dict[str, Any], divergence_factor: float | None
) -> dict[str, Any]:
    """Train one run and return its record (``attempts`` and the file are the caller's).

    Raises:
      RunFailed: the training function raised or returned something that is not records
        (the message holds the traceback); the caller decides whether to try again.
    """
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    status = "finished"
    try:
        produced = resolve_train(train)(dict(config))
        try:
            iterator = iter(produced)
        except TypeError:
            raise RecordError(
                f"the training function returned {type(produced).__name__}, not records (a list or a "
                "generator of {'step': ..., 'loss': ...})"
            ) from None
        try:
            for index, raw in enumerate(iterator):
                record = check_record(raw, index)
                records.append(record)
                if diverged(records, divergence_factor):
                    status = "diverged"
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator stopped early runs its own cleanup
    except RecordError:
        raise RunFailed(traceback.format_exc(), retry=False) from None
    except Exception:
        raise RunFailed(traceback.format_exc()) from None
    if not records:
        raise RunFailed(
            f"RecordError: the training function returned no records for run {run_id}", retry=False
        )
    return {
        "id": run_id,
        "config": dict(config),
        "status": status,
        "records": records,
        "final_loss": final_loss(records) if status == "finished" else None,
        "error": None,
        "seconds": time.perf_counter() - start,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def failed_record(run_id: str, config: dict[str, Any], error: str, attempts: int) -> dict[str, Any]:
    """The record of a run that failed on every attempt: kept, so nothing is lost."""
    return {
        "id": run_id,
        "config": dict(config),
        "status": "failed",
        "records": [],
        "final_loss": None,
        "error": error,
        "attempts": attempts,
        "seconds": None,
        "worker": None,
    }


def check_record(raw: Any, index: int) -> dict[str, Any]:
    """One record as JSON-ready numbers: ``step`` an integer, ``loss`` a float (NaN is kept:
    it is what divergence looks like), the rest numbers or ``None``."""
    if not isinstance(raw, Mapping):
        kind = type(raw).__name__
        raise RecordError(f"record {index} is {kind}, not a mapping like {{'step': 1, 'loss': 2.3}}")
    missing = [key for key in ("step", "loss") if key not in raw]
    if missing:
        raise RecordError(f"record {index} lacks {missing}; each record needs 'step' and 'loss'")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        number = _number(value)
        if number is None and value is not None:
            raise RecordError(f"record {index}: {key!r} is {value!r}; record values must be numbers")
        out[str(key)] = number
    if out["step"] is None or float(out["step"]) != int(out["step"]):
        raise RecordError(f"record {index}: 'step' must be an integer, got {raw['step']!r}")
    out["step"] = int(out["step"])
    if out["loss"] is None:
        out["loss"] = math.nan
    return out


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # numpy, torch and JAX scalars convert
    except (TypeError, ValueError):
        return None
    return int(number) if isinstance(value, int) else number


def diverged(records: list[dict[str, Any]], factor: float | None) -> bool:
    """Whether the last record's loss is not finite, or above ``factor`` times the first loss.

    Examples:
      >>> diverged([{"loss": 2.0}, {"loss": 5.0}], 3.0), diverged([{"loss": 2.0}, {"loss": 7.0}], 3.0)
      (False, True)
    """
    last = records[-1]["loss"]
    if not math.isfinite(last):
        return True
    first = records[0]["loss"]
    return factor is not None and math.isfinite(first) and first > 0 and last > factor * first


def final_loss(records: list[dict[str, Any]]) -> float:
    """Mean loss of the last tenth of the records (at least one).

    Examples:
      >>> final_loss([{"loss": float(v)} for v in range(20)])   # the last 2
      18.5
    """
    window = max(1, math.ceil(FINAL_SHARE * len(records)))
    losses = [r["loss"] for r in records[-window:]]
    return sum(losses) / len(losses)


def write_run(directory: Path, record: dict[str, Any]) -> Path:
    """Write a run's record to ``directory/<id>.json`` at once (no half-written file is ever read)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record['id']}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(_json_ready(record)))
    os.replace(partial, path)
    return path


def _json_ready(value: Any) -> Any:
    """NaN and infinities as ``null``: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def read_runs(directory: str | Path) -> list[dict[str, Any]]:
    """Every run record under ``directory`` (a sweep's folder or its ``runs`` folder), by id.

    Raises:
      MaxPError: the folder holds no run records, or one is not a run record (named).
    """
    directory = Path(directory)
    if (directory / "runs").is_dir():
        directory = directory / "runs"
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise MaxPError(f"{directory} holds no run records (runs/<id>.json); run the sweep first")
    runs = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MaxPError(f"{path}: not a readable run record ({error})") from None
        if not isinstance(record, dict) or record.get("status") not in STATUSES or "config" not in record:
            raise MaxPError(f"{path}: not a sweep run record (no status among {list(STATUSES)} or no config)")
        for r in record.get("records", []):
            if r.get("loss") is None:
                r["loss"] = math.nan
        runs.append(record)
    return runs


def is_done(directory: Path, run_id: str) -> bool:
    """Whether the run's record exists and it finished or diverged (a failed run is tried again)."""
    path = directory / f"{run_id}.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") in DONE
    except (OSError, ValueError):
        return False
