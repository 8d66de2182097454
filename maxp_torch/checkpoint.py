"""A :class:`~maxp_torch.Parametrization`'s checkpoint: everything a resumed run needs, checked on load.

A state refused on load names the field, the layer and the value, and nothing is restored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maxp_core import MaxPError, validate
from maxp_torch import sharding

if TYPE_CHECKING:
    from maxp_torch.parametrization import Parametrization

#: The keys every saved state holds (``seed``, ``missing``, ``initial_model`` and
#: ``scaled_after_miss`` came later).
REQUIRED = ("step_count", "lr_prefactor", "c", "alignment", "solves", "failures", "z0", "w0", "sample")


def state_of(param: Parametrization) -> dict[str, Any]:
    """What :meth:`Parametrization.state_dict` returns."""
    measurement = param._measurement
    initial = None
    if measurement.initial_model is not None:
        initial = {k: v.detach().clone() for k, v in measurement.initial_model.state_dict().items()}
    return {
        "step_count": param.step_count,
        "seed": param.seed,
        "lr_prefactor": param.lr_prefactor,
        "c": param.c.tolist(),
        "alignment": param.alignment.tolist(),
        "solves": param.solves,
        "failures": param.failures,
        "missing": param.missing,
        "z0": {param.names[k]: _own_memory(v) for k, v in measurement.z0.items()},
        "w0": {param.names[k]: _own_memory(v) for k, v in measurement.w0.items()},
        "sample": measurement.sample,
        "initial_model": initial,
        "scaled_after_miss": [
            [[param.names[k] for k in chunk], left] for chunk, left in measurement.scaled_left().items()
        ],
    }


def check_shapes(param: Parametrization, state: Any) -> None:
    """Refuse, by name, a state that cannot be restored onto this model."""
    if not isinstance(state, Mapping):
        raise MaxPError(
            "load_state_dict: expected the mapping Parametrization.state_dict returns, "
            f"got {type(state).__name__}"
        )
    absent = [key for key in REQUIRED if key not in state]
    if absent:
        raise MaxPError(
            f"load_state_dict: the state lacks {absent}; it is not a Parametrization.state_dict() "
            f"(its keys: {sorted(map(str, state))})"
        )
    unknown = sorted((set(state["z0"]) | set(state["w0"])) - set(param.names))
    if unknown:
        raise MaxPError(f"the state holds layers {unknown} that this model does not have: {param.names}")
    n_weighted, n_nodes = len(param.weighted), len(param.graph.nodes)
    expected = {
        "c": ((n_weighted,), f"{n_weighted} weighted layers"),
        "alignment": ((n_nodes, 3), f"graph of {n_nodes} nodes"),
    }
    for key, (shape, what) in expected.items():
        try:
            found = np.shape(state[key])
        except ValueError:
            raise MaxPError(
                f"load_state_dict: the state's {key} is ragged (rows of unequal length); this "
                f"model's {what} need {shape}"
            ) from None
        if found != shape:
            raise MaxPError(
                f"load_state_dict: the state's {key} has shape {found}, this model's {what} "
                f"need {shape}; the state was saved for another model"
            )


def restore(param: Parametrization, state: Mapping[str, Any]) -> None:
    """What :meth:`Parametrization.load_state_dict` does: check everything, then restore it all."""
    check_shapes(param, state)
    if param.use_training_activations and state.get("initial_model") is None and state["sample"] is not None:
        raise MaxPError(
            "use_training_activations=True needs the initial model's weights, which this state lacks "
            "(it was saved by a run without use_training_activations or by an older version)"
        )
    counts = {
        key: validate.integer(state.get(key, 0), f"load_state_dict: the state's {key}", 0)
        for key in ("step_count", "solves", "failures", "missing")
    }
    lr_prefactor = validate.positive_number(state["lr_prefactor"], "load_state_dict: lr_prefactor")
    c = [
        validate.exponent(value, f"load_state_dict: c of layer {name!r}")
        for name, value in zip(param._layers.weighted_names(), np.asarray(state["c"]).tolist(), strict=True)
    ]
    alignment = [
        validate.alignment_triple(row, f"load_state_dict: alignment of {name!r}")
        for name, row in zip(param.graph.names, np.asarray(state["alignment"]).tolist(), strict=True)
    ]
    # The seed resample_w0 redraws from; states saved before it was kept used the fixed 0.
    if state.get("seed") is not None:
        seed = validate.integer(state["seed"], "load_state_dict: the state's seed", 0)
    else:
        seed = param.seed if param._seed_given else 0
    index = {name: k for k, name in enumerate(param.names)}
    scaled_left = _scaled_after_miss(state.get("scaled_after_miss") or [], index)
    param.seed = seed
    param.lr_prefactor = lr_prefactor
    param.c = np.array(c, dtype=np.float64)
    param.alignment = np.array(alignment, dtype=np.float64)
    param.step_count, param.solves = counts["step_count"], counts["solves"]
    param.failures, param.missing = counts["failures"], counts["missing"]
    param._measurement.restore(
        {index[n]: v for n, v in state["z0"].items()},
        {index[n]: v for n, v in state["w0"].items()},
        state["sample"],
        state.get("initial_model"),
        scaled_left,
    )


def _scaled_after_miss(entries: Any, index: Mapping[str, int]) -> dict[tuple[int, ...], int]:
    """The checkpoint's ``scaled_after_miss`` (``[[layer names], measurements left]`` per chunk
    measured scaled directly) by layer index, refused by name where it is not that."""
    if not isinstance(entries, list | tuple):
        raise MaxPError(
            f"load_state_dict: the state's scaled_after_miss must be a list of [layer names, "
            f"measurements left], got {type(entries).__name__}"
        )
    chunks: dict[tuple[int, ...], int] = {}
    for entry in entries:
        names, left = entry if isinstance(entry, list | tuple) and len(entry) == 2 else (None, None)
        if not isinstance(names, list | tuple) or not names or any(n not in index for n in names):
            raise MaxPError(
                f"load_state_dict: the state's scaled_after_miss holds {entry!r}; each entry is "
                f"[names of this model's layers, measurements left] (its layers: {list(index)})"
            )
        chunks[tuple(index[n] for n in names)] = validate.integer(
            left, f"load_state_dict: scaled_after_miss of layers {list(names)}", 0
        )
    return chunks


def _own_memory(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied if it is a view into a larger tensor (a layer's place in a stack of
    initial weights): saved on its own, a view writes the whole stack, and safetensors refuses
    tensors that share memory."""
    if sharding.is_sharded(tensor):  # a shard of its own
        return tensor
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor
