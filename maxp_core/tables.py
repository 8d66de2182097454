"""Alignment tables: measure once at a small scale, transfer to every width and depth.

A table holds one ``(alpha, omega, u)`` per *layer kind*: the embedding, the attention's
``q``/``k``/``v`` (or a fused ``qkv``), the attention output, the MLP's ``up``, ``gate``
and ``down``, other hidden layers and the readout (:func:`layer_kind`). It is measured from
a run's metrics (:func:`measure_table`: per layer, the mean over the measurements in the
last ``fraction`` of training; per kind, the median over its layers) and applied to any
model through ``alignment_overrides=table`` in both adapters, where each layer takes its
kind's entry and the static LP is solved with those numbers. This is the published maxP
authors' "maxP-meas" workflow: alignments measured passively with a fixed parametrization
at one small width, the resulting c-table used unchanged at every width.

Examples:
  >>> table = AlignmentTable({"mlp_up": (0.8, 0.5, 0.7), "readout": (0.6, 0.5, 0.5)})
  >>> assigned, uncovered = table.for_layers(
  ...     [("blocks.0.mlp.fc1", "hidden"), ("blocks.0.attn.qkv", "hidden"), ("head", "readout")])
  >>> assigned, uncovered
  ({'blocks.0.mlp.fc1': (0.8, 0.5, 0.7), 'head': (0.6, 0.5, 0.5)}, ['blocks.0.attn.qkv (qkv)'])
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.jsonfiles import parse_json, read_text, write_text
from maxp_core.metrics import MetricsRun, record_value
from maxp_core.resolve import warn_user
from maxp_core.roles import Role

Triple = tuple[float, float, float]

#: Every layer kind a table may hold, in the order tables are printed.
KINDS: tuple[str, ...] = (
    "embedding",
    "qkv",
    "q",
    "k",
    "v",
    "attn_out",
    "mlp_up",
    "mlp_gate",
    "mlp_down",
    "hidden",
    "readout",
)
FORMAT = "maxp-alignment-table"
FORMAT_VERSION = 1

#: Hidden layers' last name component -> kind, across common model families (GPT-2, LLaMA,
#: NeoX, BERT, T5, timm ViT, this project's examples).
_BY_NAME: dict[str, str] = {
    **dict.fromkeys(("qkv", "c_attn", "in_proj", "query_key_value", "wqkv", "qkv_proj"), "qkv"),
    **dict.fromkeys(("q", "q_proj", "query", "wq", "to_q"), "q"),
    **dict.fromkeys(("k", "k_proj", "key", "wk", "to_k"), "k"),
    **dict.fromkeys(("v", "v_proj", "value", "wv", "to_v"), "v"),
    **dict.fromkeys(("o", "o_proj", "out_proj", "attn_out", "to_out"), "attn_out"),
    **dict.fromkeys(("up", "up_proj", "fc1", "c_fc", "w3", "fc_in", "wi", "dense_h_to_4h", "w_up"), "mlp_up"),
    **dict.fromkeys(("gate", "gate_proj", "w1", "wi_0", "w_gate"), "mlp_gate"),
    **dict.fromkeys(("down", "down_proj", "fc2", "w2", "fc_out", "dense_4h_to_h", "w_down"), "mlp_down"),
}
#: Names whose kind depends on the enclosing module (``attn.c_proj`` vs ``mlp.c_proj``).
_BY_CONTEXT = ("c_proj", "proj", "dense", "wo", "out", "output")
_ATTENTION = re.compile(r"attn|attention|self_attn")
_MLP = re.compile(r"mlp|ffn|feed_forward|feedforward|densereludense|output")
_STACK_INDEX = re.compile(r"\[\d+\]$")


def _components(name: str) -> list[str]:
    """A layer name's parts, split at ``.`` and ``/``, without a stack index, lower case."""
    return [p for p in re.split(r"[./]", _STACK_INDEX.sub("", name).lower()) if p]


def layer_kind(name: str, role: str | Role) -> str:
    """The kind of a layer for alignment tables, from its role and name.

    Embeddings and readouts are their role. A hidden layer's kind is read from the last
    component of its name (``blocks.0.attn.q_proj`` -> ``q``, ``mlp.fc1`` -> ``mlp_up``,
    ``w1``/``w3``/``w2`` -> LLaMA's gate/up/down); ``c_proj``, ``proj``, ``dense`` and ``wo``
    take their kind from the enclosing module (attention output or MLP down). Anything
    else is ``hidden``.

    Examples:
      >>> [layer_kind(n, "hidden") for n in ("h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_proj")]
      ['qkv', 'attn_out', 'mlp_down']
      >>> layer_kind("params/blocks/up[3]", "hidden"), layer_kind("lm_head", "readout")
      ('mlp_up', 'readout')
    """
    role = Role.parse(role, layer=name)
    if role is not Role.HIDDEN:
        return role.value
    parts = _components(name)
    if not parts:
        return "hidden"
    last, parents = parts[-1], " ".join(parts[:-1])
    if last in _BY_CONTEXT:
        if last == "dense" and "intermediate" in parents:
            return "mlp_up"
        if _ATTENTION.search(parents):
            return "attn_out"
        if _MLP.search(parents):
            return "mlp_down"
        return "attn_out" if last == "wo" else "hidden"
    return _BY_NAME.get(last, "hidden")


def _triple(value: Any, where: str) -> Triple:
    return validate.alignment_triple(value, where)


@dataclass(frozen=True)
class AlignmentTable:
    """``(alpha, omega, u)`` per layer kind (:data:`KINDS`), with where they came from.

    Attributes:
      alignments: ``{kind: (alpha, omega, u)}``.
      layers: ``{kind: number of layers}`` the entry was aggregated over (0 when given by hand).
      source: free-form facts about the measured run (width, steps, fraction, method).
    """

    alignments: Mapping[str, Triple]
    layers: Mapping[str, int] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.alignments, Mapping) or not self.alignments:
            raise MaxPError(f"an alignment table needs {{kind: (alpha, omega, u)}}, got {self.alignments!r}")
        unknown = sorted(set(self.alignments) - set(KINDS), key=str)
        if unknown:
            raise MaxPError(f"alignment table: unknown layer kinds {unknown}; expected some of {list(KINDS)}")
        checked = {
            kind: _triple(value, f"alignment table[{kind!r}]")
            for kind, value in sorted(self.alignments.items(), key=lambda item: KINDS.index(item[0]))
        }
        if not isinstance(self.layers, Mapping):
            raise MaxPError(f"alignment table: layers must be a mapping {{kind: count}}, got {self.layers!r}")
        if not isinstance(self.source, Mapping):
            raise MaxPError(f"alignment table: source must be a mapping of facts, got {self.source!r}"[:300])
        counts = {
            k: validate.integer(self.layers.get(k, 0), f"alignment table: layers[{k!r}]", 0) for k in checked
        }
        object.__setattr__(self, "alignments", checked)
        object.__setattr__(self, "layers", counts)
        object.__setattr__(self, "source", dict(self.source))

    def for_layers(self, layers: Sequence[tuple[str, str | Role]]) -> tuple[dict[str, Triple], list[str]]:
        """Each layer's entry by its kind, and the non-embedding layers the table does not cover.

        Args:
          layers: ``(name, role)`` of each weighted layer.

        Returns:
          ``({name: (alpha, omega, u)}, ["name (kind)", ...])``. Embeddings the table lacks are
          not listed: the LP does not use an embedding's alignment.
        """
        assigned: dict[str, Triple] = {}
        uncovered: list[str] = []
        for name, role in layers:
            kind = layer_kind(name, role)
            if kind in self.alignments:
                assigned[name] = self.alignments[kind]
            elif kind != "embedding":
                uncovered.append(f"{name} ({kind})")
        return assigned, uncovered

    def to_json(self) -> dict[str, Any]:
        """The table as the JSON object :meth:`write` saves and :meth:`read` takes back."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "alignments": {
                kind: {"alpha": a, "omega": o, "u": u, "layers": self.layers[kind]}
                for kind, (a, o, u) in self.alignments.items()
            },
            "source": self.source,
        }

    @classmethod
    def from_json(cls, document: Any, where: str = "the table") -> AlignmentTable:
        """Read :meth:`to_json`'s document; a bad one raises naming ``where`` and the key."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise MaxPError(f"{where} is not an alignment table (its 'format' must be {FORMAT!r})")
        if document.get("version") != FORMAT_VERSION:
            version = document.get("version")
            raise MaxPError(f"{where}: table format version {version!r} is not {FORMAT_VERSION}")
        entries = document.get("alignments")
        if not isinstance(entries, dict):
            raise MaxPError(f"{where}: 'alignments' must be an object {{kind: {{alpha, omega, u}}}}")
        alignments, layers = {}, {}
        for kind, entry in entries.items():
            if not isinstance(entry, dict) or not {"alpha", "omega", "u"} <= set(entry):
                raise MaxPError(f"{where}: alignments[{kind!r}] must hold alpha, omega and u, got {entry!r}")
            alignments[kind] = _triple(
                (entry["alpha"], entry["omega"], entry["u"]), f"{where}: alignments[{kind!r}]"
            )
            count = entry.get("layers", 0)
            layers[kind] = validate.integer(count, f"{where}: alignments[{kind!r}].layers", 0)
        source = document.get("source", {})
        if not isinstance(source, dict):
            raise MaxPError(f"{where}: 'source' must be an object of facts, got {type(source).__name__}")
        return cls(alignments, layers, source)

    def write(self, path: str | Path) -> Path:
        """Write the table as JSON to ``path`` (folders created)."""
        try:
            text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as err:
            raise MaxPError(f"the alignment table's source cannot be written as JSON: {err}") from None
        return write_text(path, text, "alignment table")

    @classmethod
    def read(cls, path: str | Path) -> AlignmentTable:
        """Read a table written by :meth:`write`; a bad file raises naming it and the fault."""
        document = parse_json(read_text(path, "alignment table"), str(path))
        return cls.from_json(document, str(path))


def _measurements(records: Sequence[Mapping[str, float]]) -> list[Mapping[str, float]]:
    """The records at which a new measurement came in (the counters moved), one each."""
    out, seen = [], (0.0, 0.0)
    for record in records:
        count = (record.get("maxp/solves", 0.0), record.get("maxp/failures", 0.0))
        if count != seen and sum(count) > 0:
            out.append(record)
        seen = count
    return out


def _measured(record: Mapping[str, Any], key: str) -> float:
    """A logged alignment, checked (never clipped into range); NaN when missing."""
    where = f"the record of step {record.get('maxp/step', '?')}"
    value = record_value(key, record.get(key), where)
    return np.nan if value is None else value


def measure_table(
    run: MetricsRun, fraction: float = 0.5, source: Mapping[str, Any] | None = None
) -> AlignmentTable:
    """The alignment table of a measured run (dynamic or measure-only).

    Per layer: the mean of ``alpha``, ``omega`` and ``u`` over the measurements taken in the
    last ``fraction`` of the run's steps (a record counts once per measurement, however
    often it was logged). Per kind (:func:`layer_kind`): the median over its layers.
    Embeddings are left out (the LP does not use their alignment).

    Raises:
      MaxPError: ``fraction`` is not in (0, 1], or the run holds no measurement in that span.

    Examples:
      >>> rec = lambda step, n, a: {"maxp/step": step, "maxp/solves": n, "maxp/alpha/fc": a,
      ...                           "maxp/omega/fc": 0.5, "maxp/u/fc": a}
      >>> run = MetricsRun({"fc": "hidden"}, [rec(1, 0, 1.0), rec(2, 1, 0.9), rec(3, 2, 0.7),
      ...                                     rec(4, 2, 0.7), rec(5, 3, 0.6)])
      >>> {k: [round(v, 6) for v in t] for k, t in measure_table(run, fraction=0.5).alignments.items()}
      {'hidden': [0.65, 0.5, 0.65]}
    """
    fraction = validate.real_number(fraction, "fraction")
    if not 0.0 < fraction <= 1.0:
        raise MaxPError(f"fraction = {fraction!r} must lie in (0, 1]: the share of the run to average over")
    steps = [r["maxp/step"] for r in run.records if "maxp/step" in r]
    if not steps:
        raise MaxPError("the metrics records hold no 'maxp/step'; write them from the adapters' metrics()")
    start = (1.0 - fraction) * max(steps)
    taken = [r for r in _measurements(run.records) if r.get("maxp/step", 0.0) > start]
    if not taken:
        raise MaxPError(
            f"no alignment was measured after step {start:g} of {max(steps):g}: measure the run "
            "(measure_only=True or dynamic re-solves) and log metrics at least once per re-solve"
        )
    per_kind: dict[str, list[np.ndarray]] = {}
    for name, role in run.layers.items():
        kind = layer_kind(name, role)
        keys = [f"maxp/{f}/{name}" for f in validate.ALIGNMENT_FIELDS]
        rows = np.array(
            [[_measured(r, k) for k in keys] for r in taken],
            dtype=np.float64,
        )
        if kind == "embedding" or np.isnan(rows).all():
            continue
        never = [
            f for f, column in zip(validate.ALIGNMENT_FIELDS, rows.T, strict=True) if np.isnan(column).all()
        ]
        if never:
            raise MaxPError(
                f"layer {name!r}: {', '.join(never)} never measured after step {start:g}, while the rest "
                "was; a table needs all three numbers of each layer (log every field of metrics())"
            )
        per_kind.setdefault(kind, []).append(np.nanmean(rows, axis=0))
    if not per_kind:
        raise MaxPError("the metrics records hold no alignments of non-embedding layers")
    alignments = {
        kind: tuple(float(v) for v in np.median(np.stack(means), axis=0)) for kind, means in per_kind.items()
    }
    facts = {
        "fraction": fraction,
        "measurements": len(taken),
        "steps": max(steps),
        **(source or {}),
    }
    return AlignmentTable(alignments, {k: len(v) for k, v in per_kind.items()}, facts)  # type: ignore[arg-type]


def override_key(name: str, role: str, keys: Sequence[str]) -> str | None:
    """The key of an ``alignment_overrides`` mapping that applies to a layer: its exact name,
    then a suffix of the name after a ``.`` or ``/``, then its role (layer type)."""
    if name in keys:
        return name
    unstacked = _STACK_INDEX.sub("", name)  # a slice of a stacked leaf: "blocks/q[3]"
    for key in keys:
        if any(n.endswith(sep + key) for n in (name, unstacked) for sep in "./"):
            return key
    return role if role in keys else None


def resolve_overrides(
    layers: Sequence[tuple[str, str]], overrides: Mapping[str, Any] | AlignmentTable | None
) -> dict[int, Triple]:
    """Each layer's fixed ``(alpha, omega, u)`` from a mapping or a table, both adapters' rule.

    A mapping's keys are layer names, name suffixes or roles, and each must apply to some
    layer. A table gives each layer its kind's entry; non-embedding layers it has no entry
    for keep the preset, and a :class:`~maxp_core.MaxPWarning` names them.

    Args:
      layers: ``(name, role)`` of each layer, in the adapter's order.

    Returns:
      ``{layer index: (alpha, omega, u)}``.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, AlignmentTable):
        assigned, uncovered = overrides.for_layers(layers)
        if uncovered:
            warn_user(
                f"the alignment table has no entry for layers {uncovered}; they keep the preset's alignment"
            )
        return {k: assigned[name] for k, (name, _) in enumerate(layers) if name in assigned}
    if not isinstance(overrides, Mapping):
        raise MaxPError(
            "alignment_overrides must be a mapping {layer name, suffix or type: (alpha, omega, u)} or an "
            f"AlignmentTable, got {overrides!r}"
        )
    triples = {key: _triple(value, f"alignment_overrides[{key!r}]") for key, value in overrides.items()}
    chosen = {k: override_key(name, role, list(triples)) for k, (name, role) in enumerate(layers)}
    unused = sorted(set(triples) - set(chosen.values()), key=str)
    if unused:
        raise MaxPError(
            f"alignment_overrides keys {unused} match no layer; a key is a layer's name, a suffix of it "
            f"after a '.' or '/', or a layer type (embedding, hidden, readout); layers: "
            f"{[name for name, _ in layers]}"
        )
    return {k: triples[key] for k, key in chosen.items() if key is not None}
