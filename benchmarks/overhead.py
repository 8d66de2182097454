"""Step-time overhead of maxP over plain AdamW, measured side by side in one run.

Run ``python -m benchmarks.overhead --framework jax`` or ``--framework torch`` (add
``--json`` to print JSON). An MLP of width 1024 and depth 8 at batch 256 is trained with
plain AdamW (``optax.adamw``, ``torch.optim.AdamW``),
with AdamW + static maxP, and with dynamic maxP re-solving every 10 and every step.
Configurations are timed round-robin (one step of each in turn) so drifts in machine
speed hit all alike; the table reports median step times and their ratio to plain.
Results go to ``benchmarks/results/overhead-<framework>.md`` and ``.json``
(``overhead-<framework>-gpu`` with ``--device gpu``). ``--framework jax --model scan-gpt``
times a LLaMA-style decoder whose blocks are stacked by ``nn.scan(nn.remat(...))``
(``overhead-jax-scan-gpt``), with a re-solve every 100 steps as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.report import write_results
from maxp_core.cli import format_table

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "static": 1.01,
    "static, one pass": 1.01,
    "dynamic/10": 1.05,
    "dynamic/10, one pass": 1.05,
    "dynamic/1": 1.25,
}


def jax_steps(
    width: int, depth: int, batch: int, sample: int, model_name: str = "mlp", seq: int = 64
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """One zero-argument step function per configuration, each with its own state."""
    import jax
    import optax

    import maxp_jax

    if model_name == "scan-gpt":
        from examples.flax_llama import Llama, llama_rules

        model: Any = Llama(vocab=256, d=width, layers=depth, scan=True)
        key = jax.random.key(0)
        x = jax.random.randint(key, (batch, seq), 0, 256)
        params = model.init(key, x[:1])
        spec = maxp_jax.MaxPSpec(params, llama_rules(), apply_fn=model.apply, sample_input=x[:1])

        def loss_fn(p: Any) -> jax.Array:
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()

    else:
        model, x, params, spec, loss_fn = _jax_mlp(width, depth, batch)
    return _jax_configs(model, x, params, spec, loss_fn, sample)


def _jax_mlp(width: int, depth: int, batch: int) -> tuple[Any, Any, Any, Any, Callable[[Any], Any]]:
    import flax.linen as nn
    import jax
    import optax

    import maxp_jax

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for _ in range(depth - 1):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    model = MLP()
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, width))
    y = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
    params = model.init(key, x[:1])
    rules = [maxp_jax.Rule(r"params/Dense_0/.*", "embedding")]
    rules += [maxp_jax.Rule(rf"params/Dense_{i}/.*", "hidden") for i in range(1, depth - 1)]
    rules += [maxp_jax.Rule(rf"params/Dense_{depth - 1}/.*", "readout")]
    spec = maxp_jax.MaxPSpec(params, rules)

    def loss_fn(q: Any) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(q, x), y).mean()

    return model, x, params, spec, loss_fn


def _jax_configs(
    model: Any, x: Any, params: Any, spec: Any, loss_fn: Callable[[Any], Any], sample: int
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    import maxp_jax

    key = jax.random.key(0)
    params = maxp_jax.abc_init(spec, params, key)

    def maxp_adamw(dynamic: maxp_jax.DynamicAlignment | None) -> optax.GradientTransformation:
        return optax.chain(
            optax.scale_by_adam(),
            optax.add_decayed_weights(1e-4),
            maxp_jax.scale_by_maxp(spec, dynamic),
            optax.scale_by_learning_rate(1e-3),
        )

    def dynamic(interval: int, warmup: int = 0) -> maxp_jax.DynamicAlignment:
        return maxp_jax.DynamicAlignment(
            model.apply, x[:sample], warmup_steps=warmup, solve_interval=interval, sample_size=sample
        )

    optimizers = {
        "plain": optax.adamw(1e-3, weight_decay=1e-4),
        "static": maxp_adamw(None),
        # The dynamic state carried through every step, no re-solve ever due.
        "dynamic, idle": maxp_adamw(dynamic(10, warmup=10**9)),
        "dynamic/100": maxp_adamw(dynamic(100)),
        "dynamic/10": maxp_adamw(dynamic(10)),
        "dynamic/1": maxp_adamw(dynamic(1)),
    }

    def make(tx: optax.GradientTransformation) -> Callable[[], Any]:
        def step(p: Any, s: Any) -> tuple[Any, Any, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        # Params and state are donated, as training loops do: no step copies what it does not change.
        jitted = jax.jit(step, donate_argnums=(0, 1))
        holder = {"p": jax.tree.map(jnp.copy, params), "s": tx.init(params)}

        def run() -> Any:
            holder["p"], holder["s"], loss = jitted(holder["p"], holder["s"])
            return jax.block_until_ready(loss)

        return run

    info = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    return {name: make(tx) for name, tx in optimizers.items()}, info


def torch_steps(
    width: int, depth: int, batch: int, sample: int, device: str = "cpu"
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """One zero-argument step function per configuration, each with its own model."""
    import torch
    from torch import nn

    import maxp_torch.optim
    from maxp_torch import Parametrization, ParametrizedModule

    torch.manual_seed(0)
    x = torch.randn(batch, width, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def mlp(parametrized: bool) -> nn.Module:
        sizes = [width] * depth + [10]
        types = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
        layers: list[nn.Module] = []
        for i in range(depth):
            linear = nn.Linear(sizes[i], sizes[i + 1])
            layers.append(
                ParametrizedModule(linear, width_dim=width, layer_type=types[i]) if parametrized else linear
            )
            if i < depth - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def make(interval: int | None, maxp_steps: bool = True, one_pass: bool = False) -> Callable[[], Any]:
        model = mlp(interval is not None).to(device)
        if interval is None:
            param = None
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        else:
            param = Parametrization(
                model, lr_prefactor=1e-3, solve_interval=max(interval, 1), sample_size=sample
            )
            adamw = maxp_torch.optim.AdamW if one_pass else torch.optim.AdamW
            optimizer = adamw(param.param_groups, weight_decay=1e-4)
            param.capture_initial(x)
            if interval == 0:  # static: never re-solve
                param.schedule = type(param.schedule)(warmup_steps=10**9)
            if not maxp_steps:
                param = None

        def run() -> Any:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if param is not None:
                param.step(x, optimizer)
            return loss.item()

        return run

    steps = {
        "plain": make(None),
        # AdamW over maxP's per-layer param groups, maxP never called: what the groups alone cost.
        "groups only": make(0, maxp_steps=False),
        "static": make(0),
        # maxp_torch.optim.AdamW: the same groups, updated in one multi-tensor pass.
        "static, one pass": make(0, one_pass=True),
        "dynamic/10": make(10),
        "dynamic/10, one pass": make(10, one_pass=True),
        "dynamic/1": make(1),
    }
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(x.device)}
    if x.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(x.device)
    return steps, info


def measure(steps: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """``(median, mean)`` seconds per step of each configuration, timed round-robin.

    The median is a typical step; the mean spreads the steps that re-solve over all."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in tqdm(range(repeats), desc="timing steps", unit="round"):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), statistics.fmean(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
    parser.add_argument(
        "--model",
        choices=("mlp", "scan-gpt"),
        default="mlp",
        help="scan-gpt (JAX): a LLaMA-style decoder, blocks stacked by nn.scan(nn.remat(...)), "
        "--width d, --depth blocks, --seq tokens",
    )
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence (scan-gpt)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sample", type=int, default=32, help="rows the alignment is measured on")
    parser.add_argument(
        "--warmup", type=int, default=12, help="untimed rounds (>= 10: a re-solve is compiled)"
    )
    parser.add_argument("--repeats", type=int, default=40, help="timed rounds")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.framework == "jax":
        if args.device == "cpu":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        steps, info = jax_steps(args.width, args.depth, args.batch, args.sample, args.model, args.seq)
    else:
        if args.model != "mlp":
            parser.error(f"--model {args.model} is a JAX model; use --framework jax")
        device = "cuda" if args.device == "gpu" else "cpu"
        steps, info = torch_steps(args.width, args.depth, args.batch, args.sample, device)
    medians = measure(steps, args.warmup, args.repeats)
    plain, plain_mean = medians["plain"]
    rows = []
    for name, (seconds, mean) in medians.items():
        ratio, mean_ratio = seconds / plain, mean / plain_mean
        target = TARGETS.get(name)
        verdict = "" if target is None else ("met" if max(ratio, mean_ratio) <= target else "missed")
        rows.append(
            {
                "config": name,
                "median_ms": 1e3 * seconds,
                "ratio": ratio,
                "mean_ms": 1e3 * mean,
                "mean_ratio": mean_ratio,
                "target": target,
                "verdict": verdict,
            }
        )
    table = format_table(
        [
            (
                r["config"],
                f"{r['median_ms']:.2f}",
                f"{r['ratio']:.3f}",
                f"{r['mean_ms']:.2f}",
                f"{r['mean_ratio']:.3f}",
                "" if r["target"] is None else f"<= {r['target']}",
                r["verdict"],
            )
            for r in rows
        ],
        ("config", "median ms", "ratio", "mean ms", "mean ratio", "target", ""),
    )
    env = {"python": platform.python_version(), "machine": platform.machine(), **info}
    if args.model == "scan-gpt":
        setup = (
            f"scan-stacked LLaMA-style decoder (nn.scan over nn.remat blocks), d {args.width}, "
            f"{args.depth} blocks, batch {args.batch} x {args.seq} tokens, "
            f"alignment sample {args.sample} rows"
        )
    else:
        setup = (
            f"MLP width {args.width}, depth {args.depth}, batch {args.batch}, "
            f"alignment sample {args.sample} rows"
        )
    markdown = (
        f"# maxP step overhead ({args.framework}, {args.device})\n\n"
        f"{setup}; AdamW (weight decay 1e-4). Median of "
        f"{args.repeats} steps per configuration, timed round-robin after {args.warmup} untimed rounds. "
        "Ratios are to plain AdamW: of the medians (a typical step) and of the means (re-solves "
        "spread over all steps); a target is met when both are within it. "
        "`dynamic/k`: alignments measured and the LP re-solved every k steps; `dynamic, idle` (JAX): "
        "the dynamic state carried through each step with no re-solve ever due (JAX steps donate their "
        "params and state). `groups only` (PyTorch): "
        "AdamW over the per-layer param groups with maxP's rates, maxP not called: the cost of one "
        "learning rate per layer in PyTorch's optimizer, which any per-layer scheme pays. "
        "`one pass` (PyTorch): the same groups stepped by `maxp_torch.optim.AdamW`, one "
        "multi-tensor update over all of them.\n\n"
        f"```\n{table}\n```\n\nEnvironment: {json.dumps(env)}\n"
    )
    payload = {"framework": args.framework, "setup": setup, "rows": rows, "environment": env}
    model = "" if args.model == "mlp" else f"-{args.model}"
    name = f"overhead-{args.framework}{model}" + ("-gpu" if args.device == "gpu" else "")
    write_results(args.out, name, payload, markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
