"""Train the same MLP in PyTorch and in JAX with maxP and record every step of both.

Used by ``python -m benchmarks.parity`` and by tests/parity. The torch model wraps
``nn.Linear`` layers in ``ParametrizedModule``; the flax model is the same stack with
its weights copied over (kernels transposed) and the output multipliers either
explicit (``ScaledDense``) or folded into the weights and learning rates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import flax.linen as nn_flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn

import maxp_jax
from maxp_core import OpGraph, StabilityLP
from maxp_jax.layers import ScaledDense
from maxp_torch import Parametrization, ParametrizedModule


@dataclass(frozen=True)
class Setup:
    """One parity run."""

    optimizer: str = "adamw"  # or "sgd" (momentum 0.9)
    dynamic: bool = True
    multipliers: str = "explicit"  # or "folded"
    steps: int = 200
    width: int = 64
    depth: int = 4
    in_dim: int = 16
    batch: int = 32
    lr: float = 0.005
    weight_decay: float = 0.01
    warmup_steps: int = 5
    solve_interval: int = 5
    sample_size: int = 32
    eps: float = 1e-8
    seed: int = 0
    torch_device: str = "cpu"  # "cuda" for the GPU table


#: The runs the parity tests check and the benchmark reports.
PARITY_SETUPS: tuple[Setup, ...] = (
    Setup(optimizer="adamw", dynamic=True),
    Setup(optimizer="adamw", dynamic=False),
    Setup(optimizer="sgd", dynamic=True, lr=0.02),
    Setup(optimizer="sgd", dynamic=False, lr=0.02),
    # Folding n^-a into init and rate is exact up to Adam's eps and weight decay.
    Setup(optimizer="adamw", dynamic=True, multipliers="folded", eps=1e-12, weight_decay=0.0),
)


@dataclass
class Trace:
    """What one framework did at every step."""

    losses: list[float] = field(default_factory=list)
    lrs: list[list[float]] = field(default_factory=list)
    c: list[list[float]] = field(default_factory=list)
    alignment: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    graph: list[tuple[float, float]] = field(default_factory=list)
    op_graph: OpGraph | None = None
    layers: list[str] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)  # the adapter's metrics() per step


def batches(setup: Setup) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed teacher-student stream: inputs and labels from a random linear teacher."""
    rng = np.random.default_rng(setup.seed)
    teacher = rng.standard_normal((setup.in_dim, 10))
    out = []
    for _ in range(setup.steps):
        x = rng.standard_normal((setup.batch, setup.in_dim)).astype(np.float32)
        out.append((x, np.argmax(x @ teacher, axis=1)))
    return out


def _torch_model(setup: Setup) -> nn.Module:
    sizes = [setup.in_dim] + [setup.width] * (setup.depth - 1) + [10]
    types = ["embedding"] + ["hidden"] * (setup.depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i in range(setup.depth):
        layers.append(
            ParametrizedModule(nn.Linear(sizes[i], sizes[i + 1]), width_dim=setup.width, layer_type=types[i])
        )
        if i < setup.depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FlaxMLP(nn_flax.Module):
    sizes: tuple[int, ...]
    multipliers: tuple[float, ...]

    @nn_flax.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.sizes):
            x = ScaledDense(size, multiplier=self.multipliers[i], name=f"Dense_{i}")(x)
            if i < len(self.sizes) - 1:
                x = nn_flax.relu(x)
        return x


def run_torch(setup: Setup, data: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Trace, list[np.ndarray]]:
    """Train in torch; return the trace and the initial weights (torch layout, then biases)."""
    torch.manual_seed(setup.seed)
    model = _torch_model(setup).to(setup.torch_device)
    param = Parametrization(
        model,
        optimizer_type="adam" if setup.optimizer == "adamw" else "sgd",
        lr_prefactor=setup.lr,
        warmup_steps=setup.warmup_steps if setup.dynamic else 10**9,
        solve_interval=setup.solve_interval,
        sample_size=setup.sample_size,
        seed=setup.seed,
    )
    pms = [m for m in model if isinstance(m, ParametrizedModule)]
    initial = [t.detach().cpu().numpy().copy() for m in pms for t in (m.inner.weight, m.inner.bias)]
    if setup.optimizer == "adamw":
        opt = torch.optim.AdamW(param.param_groups, eps=setup.eps, weight_decay=setup.weight_decay)
    else:
        opt = torch.optim.SGD(param.param_groups, momentum=0.9, weight_decay=setup.weight_decay)
    trace = Trace(graph=[(n.a, n.b) for n in param.graph.nodes], op_graph=param.graph)
    trace.layers = [param.names[k] for k in param.weighted]
    device = setup.torch_device
    param.capture_initial(torch.from_numpy(data[0][0]).to(device))
    start = time.perf_counter()
    for x_np, y_np in data:
        x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        param.step(x, opt)
        _record_torch_step(trace, param, loss)
    trace.seconds = time.perf_counter() - start
    return trace, initial


def _record_torch_step(trace: Trace, param: Parametrization, loss: torch.Tensor) -> None:
    """What a torch run records after each step: loss, rates, c, alignments (one row per
    layer of ``param.get_layer_names()``) and the metrics record."""
    trace.losses.append(loss.item())
    trace.lrs.append(param.get_last_lr())
    trace.c.append(param.c.tolist())
    trace.alignment.append(np.array(param.get_alignment()).T)
    trace.metrics.append(param.metrics())


def run_jax(setup: Setup, data: list[tuple[np.ndarray, np.ndarray]], initial: list[np.ndarray]) -> Trace:
    """Train the same network in JAX from the torch initial weights."""
    sizes = tuple([setup.width] * (setup.depth - 1) + [10])
    probe = FlaxMLP(sizes, (1.0,) * setup.depth)
    params = probe.init(jax.random.key(0), jnp.ones((1, setup.in_dim)))
    rules = [maxp_jax.Rule(r"params/Dense_0/.*", "embedding")]
    rules += [maxp_jax.Rule(rf"params/Dense_{i}/.*", "hidden") for i in range(1, setup.depth - 1)]
    rules += [maxp_jax.Rule(rf"params/Dense_{setup.depth - 1}/.*", "readout")]
    spec = maxp_jax.MaxPSpec(
        params,
        rules,
        optimizer="adam" if setup.optimizer == "adamw" else "sgd",
        multipliers=setup.multipliers,
    )
    explicit = [spec.multiplier(layer.name) for layer in spec.layers]
    model = FlaxMLP(sizes, tuple(explicit) if setup.multipliers == "explicit" else (1.0,) * setup.depth)
    weights = {}
    for i in range(setup.depth):
        w, b = initial[2 * i], initial[2 * i + 1]
        fold = 1.0 if setup.multipliers == "explicit" else explicit[i]
        weights[f"Dense_{i}"] = {"kernel": jnp.asarray(w.T * fold), "bias": jnp.asarray(b * fold)}
    params = {"params": weights}
    dynamic = None
    if setup.dynamic:
        dynamic = maxp_jax.DynamicAlignment(
            model.apply,
            jnp.asarray(data[0][0]),
            warmup_steps=setup.warmup_steps,
            solve_interval=setup.solve_interval,
            sample_size=setup.sample_size,
        )
    if setup.optimizer == "adamw":
        tx = optax.chain(
            optax.scale_by_adam(eps=setup.eps),
            optax.add_decayed_weights(setup.weight_decay),
            maxp_jax.scale_by_maxp(spec, dynamic),
            optax.scale_by_learning_rate(setup.lr),
        )
    else:
        tx = optax.chain(
            optax.add_decayed_weights(setup.weight_decay),
            optax.trace(decay=0.9),
            maxp_jax.scale_by_maxp(spec, dynamic),
            optax.scale_by_learning_rate(setup.lr),
        )
    state = tx.init(params)

    @jax.jit
    def step(p, s, x, y):
        def loss_fn(q):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(q, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    trace = Trace(graph=[(n.a, n.b) for n in spec.graph.nodes], op_graph=spec.graph)
    trace.layers = [layer.name for layer in spec.layers]
    start = time.perf_counter()
    for x, y in data:
        params, state, loss = step(params, state, jnp.asarray(x), jnp.asarray(y))
        ms = maxp_jax.find_maxp_state(state)
        trace.losses.append(float(loss))
        trace.lrs.append([setup.lr * float(f) for f in ms.factors])
        trace.c.append(np.asarray(ms.c, np.float64).tolist())
        trace.alignment.append(np.asarray(ms.alignment, np.float64))
        logged = jax.device_get(maxp_jax.metrics(state, spec, learning_rate=setup.lr))
        trace.metrics.append({k: float(v) for k, v in logged.items()})
    trace.seconds = time.perf_counter() - start
    return trace


@dataclass(frozen=True)
class Gap:
    """The largest difference of one quantity and where it first passes its tolerance."""

    quantity: str
    largest: float
    tolerance: float
    first_failure: str | None


def compare(setup: Setup, torch_trace: Trace, jax_trace: Trace) -> list[Gap]:
    """Step-by-step differences. A torch scheduler sets step t+1's rates after step t;
    JAX's state holds them after update t+1: rates, c and alignments are shifted by one."""
    gaps = []

    def scan(name: str, pairs: list[tuple[str, np.ndarray, np.ndarray]], tol: float, relative: bool) -> None:
        largest, first = 0.0, None
        for where, a, b in pairs:
            diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
            if relative:
                diff = diff / np.maximum(np.abs(np.asarray(b, np.float64)), 1e-30)
            worst = float(diff.max()) if diff.size else 0.0
            largest = max(largest, worst)
            if first is None and worst > tol:
                per_layer = diff.reshape(diff.shape[0], -1).max(axis=-1)
                first = where if per_layer.size == 1 else f"{where}, layer {int(np.argmax(per_layer))}"
        gaps.append(Gap(name, largest, tol, first))

    n = len(torch_trace.losses)
    a = np.array([ab[0] for ab in torch_trace.graph])
    # Folded rates are n^-(c + a): times n^a they are the explicit (torch) ones.
    unfold = setup.width**a if setup.multipliers == "folded" else np.ones_like(a)
    scan("lp inputs (a, b)", [("graph", np.array(torch_trace.graph), np.array(jax_trace.graph))], 0.0, False)
    scan(
        "loss",
        [
            (f"step {t + 1}", np.array([torch_trace.losses[t]]), np.array([jax_trace.losses[t]]))
            for t in range(n)
        ],
        1e-4,
        True,
    )
    shifted = range(n - 1)
    scan(
        "learning rate",
        [
            (f"step {t + 2}", np.array(torch_trace.lrs[t]), np.array(jax_trace.lrs[t + 1]) * unfold)
            for t in shifted
        ],
        1e-4,
        True,
    )
    scan(
        "c",
        [(f"after step {t + 1}", np.array(torch_trace.c[t]), np.array(jax_trace.c[t + 1])) for t in shifted],
        1e-4,
        False,
    )
    scan(
        "alignment",
        [(f"after step {t + 1}", torch_trace.alignment[t], jax_trace.alignment[t + 1]) for t in shifted],
        1e-5 if setup.multipliers == "explicit" else 1e-4,
        False,
    )
    return gaps


#: Tolerance per metrics field: (value, relative); counters must agree exactly.
METRICS_TOLERANCE = {
    "lr": (1e-4, True),
    "lr_factor": (1e-4, True),
    "c": (1e-4, False),
    "alpha": (1e-5, False),
    "omega": (1e-5, False),
    "u": (1e-5, False),
    "step": (0.0, False),
    "solves": (0.0, False),
    "failures": (0.0, False),
    "missing": (0.0, False),
}


def _by_position(record: dict[str, float], layers: list[str]) -> dict[str, float]:
    """A metrics record with each layer's name replaced by its position."""
    index = {name: str(k) for k, name in enumerate(layers)}
    out = {}
    for key, value in record.items():
        field, _, layer = key.removeprefix("maxp/").partition("/")
        out[f"maxp/{field}/{index[layer]}" if layer else key] = value
    return out


def compare_metrics(torch_trace: Trace, jax_trace: Trace) -> list[Gap]:
    """The two adapters' ``metrics()`` records, key by key (layers matched by position).

    JAX re-solves at the start of the next update, so its record after step ``t + 1`` holds
    what PyTorch's holds after step ``t`` (as in :func:`compare`); its ``maxp/step`` is then one
    more, which is checked. ``maxp/solve_seconds`` is a wall time and is left out.
    """
    pairs = []
    for t in range(len(torch_trace.metrics) - 1):
        ours = _by_position(torch_trace.metrics[t], torch_trace.layers)
        theirs = _by_position(jax_trace.metrics[t + 1], jax_trace.layers)
        theirs["maxp/step"] -= 1.0
        if set(ours) != set(theirs):
            missing = sorted(set(ours) ^ set(theirs))
            return [Gap("metrics keys", float(len(missing)), 0.0, f"after step {t + 1}: {missing[:4]}")]
        pairs.append((f"after step {t + 1}", ours, theirs))
    gaps = []
    for quantity, (tol, relative) in METRICS_TOLERANCE.items():
        largest, first = 0.0, None
        for where, ours, theirs in pairs:
            keys = [k for k in ours if k.split("/")[1] == quantity]
            a, b = np.array([ours[k] for k in keys]), np.array([theirs[k] for k in keys])
            diff = np.abs(a - b) / (np.maximum(np.abs(b), 1e-30) if relative else 1.0)
            worst = float(diff.max()) if diff.size else 0.0
            largest = max(largest, worst)
            if first is None and worst > tol:
                first = f"{where}, {keys[int(np.argmax(diff))]}"
        gaps.append(Gap(f"metrics {quantity}", largest, tol, first))
    return gaps


def same_core_gap(
    torch_trace: Trace,
    graph_torch: OpGraph,
    graph_jax: OpGraph,
    optimizer: str,
    rename: Callable[[str], str] | None = None,
) -> float:
    """Largest c difference when both frameworks' LPs get torch's alignments (same core).

    ``rename`` maps a JAX graph name to the torch one; without it the graphs' nodes are
    matched by position (the MLP, whose nodes are all layers in the same order).
    """
    lp_t, lp_j = StabilityLP(graph_torch, optimizer), StabilityLP(graph_jax, optimizer)
    worst = 0.0
    to_jax = {rename(n): n for n in graph_jax.names} if rename else {}
    for al in torch_trace.alignment[:: max(len(torch_trace.alignment) // 20, 1)]:
        if rename is None:
            kw = {"alpha": al[:, 0], "omega": al[:, 1], "u": al[:, 2]}
            ct = np.array(list(lp_t.solve(**kw).c.values()))
            cj = np.array(list(lp_j.solve(**kw).c.values()))
        else:
            fields = ("alpha", "omega", "u")
            kw_t = {f: dict(zip(torch_trace.layers, al[:, j], strict=True)) for j, f in enumerate(fields)}
            kw_j = {f: {to_jax[n]: v for n, v in values.items()} for f, values in kw_t.items()}
            c_t, c_j = lp_t.solve(**kw_t).c, lp_j.solve(**kw_j).c
            ct = np.array([c_t[n] for n in torch_trace.layers])
            cj = np.array([c_j[to_jax[n]] for n in torch_trace.layers])
        worst = max(worst, float(np.abs(ct - cj).max()))
    return worst


@dataclass(frozen=True)
class GptSetup:
    """One parity run of the 2-block GPT (:mod:`examples.torch_models`, :mod:`examples.flax_models`)."""

    optimizer: str = "adamw"
    dynamic: bool = True
    multipliers: str = "explicit"
    steps: int = 200
    width: int = 32
    blocks: int = 2
    vocab: int = 50
    ctx: int = 16
    batch: int = 8
    lr: float = 0.005
    weight_decay: float = 0.01
    warmup_steps: int = 5
    solve_interval: int = 5
    sample_size: int = 32  # token rows: the first two sequences of the first batch
    eps: float = 1e-8
    seed: int = 0
    torch_device: str = "cpu"


def token_batches(setup: GptSetup) -> list[np.ndarray]:
    """Sequences from a fixed random bigram model, one ``(batch, ctx)`` array per step."""
    rng = np.random.default_rng(setup.seed)
    logits = 2.0 * rng.standard_normal((setup.vocab, setup.vocab))
    transition = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cumulative = np.cumsum(transition, axis=1)
    out = []
    for _ in range(setup.steps):
        ids = np.empty((setup.batch, setup.ctx), np.int64)
        ids[:, 0] = rng.integers(0, setup.vocab, setup.batch)
        for t in range(1, setup.ctx):
            draws = rng.random(setup.batch)[:, None]
            ids[:, t] = np.minimum((cumulative[ids[:, t - 1]] < draws).sum(axis=1), setup.vocab - 1)
        out.append(ids)
    return out


def run_torch_gpt(setup: GptSetup, data: list[np.ndarray]) -> tuple[Trace, dict[str, np.ndarray]]:
    """Train the GPT in torch (AdamW); the trace and the initial state dict as numpy arrays."""
    from examples.torch_models import GPT, next_token_loss

    torch.manual_seed(setup.seed)
    device = setup.torch_device
    model = GPT(d=setup.width, blocks=setup.blocks, vocab=setup.vocab, ctx=setup.ctx).to(device)
    first = torch.from_numpy(data[0]).to(device)
    param = Parametrization(
        model,
        optimizer_type="adam",
        lr_prefactor=setup.lr,
        warmup_steps=setup.warmup_steps if setup.dynamic else 10**9,
        solve_interval=setup.solve_interval,
        sample_size=setup.sample_size,
        seed=setup.seed,
        sample_input=first[:1],
    )
    initial = {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}
    opt = torch.optim.AdamW(param.param_groups, eps=setup.eps, weight_decay=setup.weight_decay)
    names = param.get_layer_names()
    trace = Trace(op_graph=param.graph, layers=names)
    trace.graph = [param.exponents[param.names.index(n)] for n in names]
    param.capture_initial(first)
    start = time.perf_counter()
    for ids_np in data:
        ids = torch.from_numpy(ids_np).to(device)
        opt.zero_grad()
        loss = next_token_loss(model(ids), ids)
        loss.backward()
        opt.step()
        param.step(ids, opt)
        _record_torch_step(trace, param, loss)
    trace.seconds = time.perf_counter() - start
    return trace, initial


def _flax_gpt_params(initial: dict[str, np.ndarray], blocks: int) -> dict[str, object]:
    """The torch GPT's state dict as the flax twin's params (kernels transposed)."""

    def kernel(name: str) -> jax.Array:
        return jnp.asarray(initial[f"{name}.inner.weight"].T)

    def norm(name: str) -> dict[str, jax.Array]:
        return {"scale": jnp.asarray(initial[f"{name}.weight"]), "bias": jnp.asarray(initial[f"{name}.bias"])}

    params: dict[str, object] = {
        "tok": {"embedding": jnp.asarray(initial["tok.inner.weight"])},
        "pos": {"embedding": jnp.asarray(initial["pos.inner.weight"])},
        "LayerNorm_0": norm("ln"),
        "head": {"kernel": kernel("head")},
    }
    for i in range(blocks):
        layers = ("q", "k", "v", "o", "gate", "up", "down")
        block = {layer: {"kernel": kernel(f"blocks.{i}.{layer}")} for layer in layers}
        params[f"blocks_{i}"] = {
            **block,
            "LayerNorm_0": norm(f"blocks.{i}.ln1"),
            "LayerNorm_1": norm(f"blocks.{i}.ln2"),
        }
    return {"params": params}


def run_jax_gpt(
    setup: GptSetup, data: list[np.ndarray], initial: dict[str, np.ndarray], layers: list[str]
) -> Trace:
    """Train the flax twin from the torch initial weights; the trace in torch's names and order ``layers``.

    The alignment sample is the first batch's first ``ceil(sample_size / ctx)`` sequences: the
    rows PyTorch measures on.
    """
    from examples.flax_models import FlaxGPT, flax_to_torch_name, gpt_rules

    probe = FlaxGPT(d=setup.width, blocks=setup.blocks, vocab=setup.vocab, ctx=setup.ctx)
    ids0 = jnp.asarray(data[0], jnp.int32)
    spec = maxp_jax.MaxPSpec(
        jax.eval_shape(probe.init, jax.random.key(0), ids0[:1]),  # shapes suffice: nothing compiled
        gpt_rules(),
        optimizer="adam",
        multipliers="explicit",
        apply_fn=probe.apply,
        sample_input=ids0[:1],
    )
    names = [flax_to_torch_name(layer.name) for layer in spec.layers]
    if any(spec.multiplier(layer.name) != 1.0 for layer in spec.layers if "/blocks_" in layer.name):
        raise ValueError("the flax GPT applies multipliers to tok, pos and head only")
    scales = tuple(float(spec.multiplier(f"params/{n}")) for n in ("tok", "pos", "head"))
    model = FlaxGPT(d=setup.width, blocks=setup.blocks, vocab=setup.vocab, ctx=setup.ctx, scales=scales)
    params = _flax_gpt_params(initial, setup.blocks)
    dynamic = None
    if setup.dynamic:
        dynamic = maxp_jax.DynamicAlignment(
            model.apply,
            ids0[: -(-setup.sample_size // setup.ctx)],
            warmup_steps=setup.warmup_steps,
            solve_interval=setup.solve_interval,
            sample_size=setup.sample_size,
        )
    tx = optax.chain(
        optax.scale_by_adam(eps=setup.eps),
        optax.add_decayed_weights(setup.weight_decay),
        maxp_jax.scale_by_maxp(spec, dynamic),
        optax.scale_by_learning_rate(setup.lr),
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s, ids):
        def loss_fn(q):
            logits = model.apply(q, ids)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    order = [names.index(n) for n in layers]
    trace = Trace(op_graph=spec.graph, layers=list(layers))
    trace.graph = [(spec.layers[j].a, spec.layers[j].b) for j in order]
    start = time.perf_counter()
    for ids in data:
        params, state, loss = step(params, state, jnp.asarray(ids, jnp.int32))
        ms = maxp_jax.find_maxp_state(state)
        trace.losses.append(float(loss))
        logged = jax.device_get(maxp_jax.metrics(state, spec, learning_rate=setup.lr))
        factors, c, alignment = jax.device_get((ms.factors, ms.c, ms.alignment))
        trace.lrs.append([setup.lr * float(factors[j]) for j in order])
        trace.c.append([float(c[j]) for j in order])
        trace.alignment.append(np.asarray(alignment, np.float64)[order])
        trace.metrics.append({_renamed(k, flax_to_torch_name): float(v) for k, v in logged.items()})
    trace.seconds = time.perf_counter() - start
    return trace


def _renamed(key: str, rename: Callable[[str], str]) -> str:
    """A metrics key with its layer renamed: ``maxp/c/params/head`` to ``maxp/c/head``."""
    field, _, layer = key.removeprefix("maxp/").partition("/")
    return f"maxp/{field}/{rename(layer)}" if layer else key
