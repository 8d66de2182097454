"""Step-time and memory overhead of maxP over plain AdamW, measured side by side in one run.

Run ``python -m benchmarks.overhead --framework jax`` or ``--framework torch`` (add
``--json`` to print JSON). An MLP of width 1024 and depth 8 at batch 256 is trained with
plain AdamW (``optax.adamw``, ``torch.optim.AdamW``),
with AdamW + static maxP, and with dynamic maxP re-solving every 100, every 10 and every step.
Configurations are timed round-robin (one step of each in turn) so drifts in machine
speed hit all alike; the table reports median step times and their ratio to plain.
Each configuration's peak memory is then measured in a process of its own that trains only
it (the peak resident set on a CPU, the peak allocated device memory on a GPU); ``extra`` is
its excess over plain AdamW's (``--no-memory`` skips this).
Results go to ``benchmarks/results/overhead-<framework>.md`` and ``.json``
(``overhead-<framework>-gpu`` with ``--device gpu``). ``--model gpt`` times the GPT of
:mod:`examples.torch_models` (its flax twin in JAX: ``--width`` d, ``--depth`` blocks,
``--seq`` tokens, ``--vocab``; ``overhead-<framework>-gpt``); ``--framework jax --model scan-gpt``
a LLaMA-style decoder whose blocks are stacked by ``nn.scan(nn.remat(...))``
(``overhead-jax-scan-gpt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.report import write_results
from maxp_core.text import format_table

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
TARGETS = {
    "static": 1.01,
    "static, one pass": 1.01,
    "dynamic/100": 1.01,
    "dynamic/10": 1.05,
    "dynamic/10, one pass": 1.05,
    "dynamic/1": 1.25,
    "dynamic/100, between steps": 1.01,
    "dynamic/10, between steps": 1.05,
    "dynamic/1, between steps": 1.25,
}
MODELS = ("mlp", "gpt", "scan-gpt")
#: The published maxP's configurations with ``--published``: re-solving every k steps.
PUBLISHED_INTERVALS = (100, 10, 1)
CONFIGS = {
    "jax": (
        "plain",
        "static",
        "dynamic, idle",
        "dynamic/100",
        "dynamic/10",
        "dynamic/1",
        "dynamic, idle, between steps",
        "dynamic/100, between steps",
        "dynamic/10, between steps",
        "dynamic/1, between steps",
    ),
    "torch": (
        "plain",
        "groups only",
        "static",
        "static, one pass",
        "dynamic/100",
        "dynamic/10",
        "dynamic/10, one pass",
        "dynamic/1",
    ),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """What is trained: ``model`` (one of :data:`MODELS`) and its sizes.

    ``depth`` counts layers of the MLP and blocks of the GPTs; ``seq`` and ``vocab`` are the
    GPTs' tokens per sequence and vocabulary; ``sample`` the rows alignments are measured on.
    """

    model: str = "mlp"
    width: int = 1024
    depth: int = 8
    batch: int = 256
    seq: int = 64
    vocab: int = 256
    sample: int = 32

    def describe(self) -> str:
        if self.model == "mlp":
            shape = f"MLP width {self.width}, depth {self.depth}, batch {self.batch}"
        else:
            kind = (
                "scan-stacked LLaMA-style decoder (nn.scan over nn.remat blocks)"
                if self.model == "scan-gpt"
                else "GPT (examples.torch_models.GPT, its flax twin in JAX)"
            )
            shape = (
                f"{kind}, d {self.width}, {self.depth} blocks, vocabulary {self.vocab}, "
                f"batch {self.batch} x {self.seq} tokens"
            )
        return f"{shape}, alignment sample {self.sample} rows"


def jax_steps(
    work: Workload, only: Collection[str] | None = None
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """One zero-argument step function per configuration (those in ``only``), each with its own state."""
    import jax
    import optax

    import maxp_jax

    if work.model == "mlp":
        model, x, params, spec, loss_fn = _jax_mlp(work.width, work.depth, work.batch)
        return _jax_configs(model, x, params, spec, loss_fn, work.sample, only)
    key = jax.random.key(0)
    x = jax.random.randint(key, (work.batch, work.seq), 0, work.vocab)
    if work.model == "scan-gpt":
        from examples.flax_llama import Llama, llama_rules

        model: Any = Llama(vocab=work.vocab, d=work.width, layers=work.depth, scan=True)
        rules = llama_rules()
    else:
        from examples.flax_models import FlaxGPT, gpt_rules

        model = FlaxGPT(d=work.width, blocks=work.depth, vocab=work.vocab, ctx=work.seq)
        rules = gpt_rules()
    params = model.init(key, x[:1])
    spec = maxp_jax.MaxPSpec(params, rules, apply_fn=model.apply, sample_input=x[:1])

    def loss_fn(p: Any) -> jax.Array:
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()

    # Whole sequences whose tokens give the sample rows, as PyTorch's shrunk sample.
    sample = x[: -(-work.sample // work.seq)]
    return _jax_configs(model, sample, params, spec, loss_fn, work.sample, only)


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
    model: Any,
    x: Any,
    params: Any,
    spec: Any,
    loss_fn: Callable[[Any], Any],
    sample: int,
    only: Collection[str] | None,
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """``x`` holds the inputs alignments are measured on (their first ``sample`` rows)."""
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

    def dynamic(interval: int, warmup: int = 0, in_step: bool = True) -> maxp_jax.DynamicAlignment:
        return maxp_jax.DynamicAlignment(
            model.apply,
            x[:sample],
            warmup_steps=warmup,
            solve_interval=interval,
            sample_size=sample,
            in_step=in_step,
        )

    def dynamic_config(interval: int, warmup: int, in_step: bool) -> Callable[[], tuple[Any, Any]]:
        def build() -> tuple[optax.GradientTransformation, Any]:
            config = dynamic(interval, warmup, in_step)
            return maxp_adamw(config), None if in_step else maxp_jax.SolveBetweenSteps(spec, config)

        return build

    # Each configuration: the optimizer, and what runs after each step (a re-solve, or nothing).
    optimizers: dict[str, Callable[[], tuple[optax.GradientTransformation, Any]]] = {
        "plain": lambda: (optax.adamw(1e-3, weight_decay=1e-4), None),
        "static": lambda: (maxp_adamw(None), None),
    }
    # "dynamic, idle": the dynamic state carried through every step, no re-solve ever due.
    schedules = {
        "dynamic, idle": (10, 10**9),
        "dynamic/100": (100, 0),
        "dynamic/10": (10, 0),
        "dynamic/1": (1, 0),
    }
    for name, (interval, warmup) in schedules.items():
        optimizers[name] = dynamic_config(interval, warmup, in_step=True)
        optimizers[f"{name}, between steps"] = dynamic_config(interval, warmup, in_step=False)

    def make(tx: optax.GradientTransformation, solve: Any) -> Callable[[], Any]:
        def step(p: Any, s: Any) -> tuple[Any, Any, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        # Params and state are donated, as training loops do: no step copies what it does not change.
        jitted = jax.jit(step, donate_argnums=(0, 1))
        holder = {"p": jax.tree.map(jnp.copy, params), "s": tx.init(params), "updates": 0}

        def run() -> Any:
            holder["p"], holder["s"], loss = jitted(holder["p"], holder["s"])
            holder["updates"] += 1
            if solve is not None:
                holder["s"] = solve(holder["s"], holder["p"], holder["updates"])
            return jax.block_until_ready(loss)

        return run

    info = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    return {name: make(*pair()) for name, pair in optimizers.items() if only is None or name in only}, info


def _torch_model(
    work: Workload, parametrized: bool, device: str, package: Any = None
) -> tuple[Any, Any, Callable[[], Any], Any]:
    """``(model, batch, loss of the batch, sample_input for tracing or None)``; its layers wrapped
    by ``package``'s ``ParametrizedModule`` (default ``maxp_torch``; the published maxP's for
    its configurations, whose GPT multiplies one-hot ids by its tables:
    :func:`benchmarks.versus_published.one_hot_gpt`)."""
    import torch
    from torch import nn

    from maxp_torch import ParametrizedModule

    torch.manual_seed(0)
    wrap = ParametrizedModule if package is None else package.ParametrizedModule
    if work.model == "gpt" and package is not None:
        from benchmarks.versus_published import one_hot_gpt
        from examples.torch_models import next_token_loss

        model = one_hot_gpt(package, d=work.width, blocks=work.depth, vocab=work.vocab, ctx=work.seq)
        model = model.to(device)
        ids = torch.randint(0, work.vocab, (work.batch, work.seq), device=device)
        return model, ids, lambda: next_token_loss(model(ids), ids), ids[:1]
    if work.model == "gpt":
        from examples.torch_models import GPT, next_token_loss

        gpt = GPT(d=work.width, blocks=work.depth, vocab=work.vocab, ctx=work.seq, parametrized=parametrized)
        gpt = gpt.to(device)
        ids = torch.randint(0, work.vocab, (work.batch, work.seq), device=device)
        return gpt, ids, lambda: next_token_loss(gpt(ids), ids), ids[:1]
    x = torch.randn(work.batch, work.width, device=device)
    y = torch.randint(0, 10, (work.batch,), device=device)
    sizes = [work.width] * work.depth + [10]
    types = ["embedding"] + ["hidden"] * (work.depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i in range(work.depth):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(wrap(linear, width_dim=work.width, layer_type=types[i]) if parametrized else linear)
        if i < work.depth - 1:
            layers.append(nn.ReLU())
    mlp = nn.Sequential(*layers).to(device)
    return mlp, x, lambda: nn.functional.cross_entropy(mlp(x), y), None


def torch_steps(
    work: Workload, device: str = "cpu", only: Collection[str] | None = None, published: Path | None = None
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """One zero-argument step function per configuration (those in ``only``), each with its own
    model; with ``published`` (a checkout of the published maxP) also its dynamic configurations."""
    import torch

    import maxp_torch.optim

    package: Any = None
    if published is not None:
        from benchmarks.versus_published import published_package

        package = published_package(published)

    def make(
        interval: int | None, maxp_steps: bool = True, one_pass: bool = False, theirs: bool = False
    ) -> Callable[[], Any]:
        side = package if theirs else None
        model, x, loss_of_batch, sample_input = _torch_model(work, interval is not None, device, side)
        if interval is None:
            param = None
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        else:
            param = (side or maxp_torch).Parametrization(
                model,
                lr_prefactor=1e-3,
                solve_interval=max(interval, 1),
                sample_size=work.sample,
                sample_input=sample_input,
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
            loss = loss_of_batch()
            loss.backward()
            optimizer.step()
            if param is not None:
                param.step(x, optimizer)
            return loss.item()

        return run

    configs: dict[str, Callable[[], Callable[[], Any]]] = {
        "plain": lambda: make(None),
        # AdamW over maxP's per-layer param groups, maxP never called: what the groups alone cost.
        "groups only": lambda: make(0, maxp_steps=False),
        "static": lambda: make(0),
        # maxp_torch.optim.AdamW: the same groups, updated in one multi-tensor pass.
        "static, one pass": lambda: make(0, one_pass=True),
        "dynamic/100": lambda: make(100),
        "dynamic/10": lambda: make(10),
        "dynamic/10, one pass": lambda: make(10, one_pass=True),
        "dynamic/1": lambda: make(1),
    }
    if package is not None:
        for interval in PUBLISHED_INTERVALS:
            configs[f"published dynamic/{interval}"] = lambda k=interval: make(k, theirs=True)
    steps = {name: build() for name, build in configs.items() if only is None or name in only}
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return steps, info


def measure(steps: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """``(median, mean)`` seconds per step of each configuration, timed round-robin.

    The median is a typical step; the mean spreads the steps that re-solve over all. Each
    configuration's untimed steps reach its first re-solve, so what is compiled then (the
    measurement of ``between steps``) is not timed."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    for name, run in steps.items():
        for _ in range(first_solve(name) - warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in tqdm(range(repeats), desc="timing steps", unit="round"):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), statistics.fmean(values)) for name, values in times.items()}


def peak_memory_mib(framework: str, device: str) -> float:
    """This process's peak memory so far: resident set on a CPU, allocated device memory on a GPU."""
    if device == "cpu":
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent process through exec.
        status = Path("/proc/self/status")
        if status.exists():
            found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
            if found:
                return int(found.group(1)) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if framework == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import jax

    # Some backends keep no allocator statistics: the peak is then missing, not zero.
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return math.nan if peak is None else float(peak) / 2**20


def first_solve(config: str) -> int:
    """The step of a configuration's first re-solve (0 for those that never re-solve).

    Example:
      >>> first_solve("dynamic/10, one pass"), first_solve("static")
      (10, 0)
    """
    if not config.startswith("dynamic/"):
        return 0
    return int(config.removeprefix("dynamic/").split(",")[0])


def memory_of_configs(argv: list[str], names: list[str]) -> dict[str, float]:
    """Peak memory (MiB) of each configuration, each trained alone in a fresh process."""
    peaks = {}
    # A fixed threshold makes glibc return every large block to the system when it is freed, so the
    # resident set follows what is allocated instead of how the heap happened to grow (which moved
    # peaks of the same program by tens of MiB from run to run).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    for name in tqdm(names, desc="peak memory", unit="config"):
        command = [sys.executable, "-m", "benchmarks.overhead", *argv, "--memory-of", name]
        done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
        peaks[name] = float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])
    return peaks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="gpt: examples' GPT (both frameworks); scan-gpt (JAX): a LLaMA-style decoder, blocks "
        "stacked by nn.scan(nn.remat(...)); --width d, --depth blocks, --seq tokens, --vocab",
    )
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence (GPTs)")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary (GPTs)")
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
    parser.add_argument(
        "--configs",
        type=lambda text: [name.strip() for name in text.split(";")],
        help='the configurations to run, separated by ";" (plain always runs): e.g. "static;dynamic/100"',
    )
    parser.add_argument(
        "--published",
        metavar="PATH",
        type=Path,
        help="a checkout of the published maxP (PyTorch): its dynamic configurations side by side",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-of", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    work = Workload(args.model, args.width, args.depth, args.batch, args.seq, args.vocab, args.sample)
    only = None if args.configs is None else {"plain", *args.configs}
    if args.memory_of is not None:
        only = {args.memory_of}
    if args.published is not None and args.framework != "torch":
        parser.error("--published times the published maxP, a PyTorch library: add --framework torch")
    known = list(CONFIGS[args.framework])
    if args.published is not None:
        known += [f"published dynamic/{k}" for k in PUBLISHED_INTERVALS]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        parser.error(f"no {args.framework} configuration named {unknown}; there are {known}")
    if args.framework == "jax":
        if args.device == "cpu":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        steps, info = jax_steps(work, only)
    else:
        if args.model == "scan-gpt":
            parser.error("--model scan-gpt is a JAX model; use --framework jax")
        device = "cuda" if args.device == "gpu" else "cpu"
        published = None if args.published is None else args.published.resolve()
        steps, info = torch_steps(work, device, only, published)
    if args.memory_of is not None:
        for _ in range(max(args.warmup, first_solve(args.memory_of))):
            next(iter(steps.values()))()
        print(json.dumps({"peak_mib": peak_memory_mib(args.framework, args.device)}))
        return 0
    medians = measure(steps, args.warmup, args.repeats)
    peaks = {} if args.no_memory else memory_of_configs(argv, list(steps))
    rows = _rows(medians, peaks)
    table = format_table(
        [
            (
                r["config"],
                f"{r['median_ms']:.2f}",
                f"{r['ratio']:.3f}",
                f"{r['mean_ms']:.2f}",
                f"{r['mean_ratio']:.3f}",
                "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}",
                "" if r["extra_mib"] is None else f"{r['extra_mib']:+.1f}",
                "" if r["target"] is None else f"<= {r['target']}",
                r["verdict"],
            )
            for r in rows
        ],
        ("config", "median ms", "ratio", "mean ms", "mean ratio", "peak MiB", "extra", "target", ""),
    )
    env = {"python": platform.python_version(), "machine": platform.machine(), **info}
    setup = work.describe()
    peak_kind = "resident set (RSS)" if args.device == "cpu" else "allocated device memory"
    markdown = (
        f"# maxP step overhead ({args.framework}, {args.device})\n\n"
        f"{setup}; AdamW (weight decay 1e-4). Median of "
        f"{args.repeats} steps per configuration, timed round-robin after {args.warmup} untimed rounds "
        "(and each configuration's untimed steps up to its first re-solve). "
        "Ratios are to plain AdamW: of the medians (a typical step) and of the means (re-solves "
        "spread over all steps); a target is met when both are within it. "
        f"`peak MiB`: the peak {peak_kind} of a process that trains only that configuration for "
        f"{args.warmup} steps, or until its first re-solve if later (the same imports in every "
        "process, glibc's mmap threshold fixed at 128 KiB); `extra`: its excess over plain's. "
        "`dynamic/k`: alignments measured and the LP re-solved every k steps; `dynamic, idle` (JAX): "
        "the dynamic state carried through each step with no re-solve ever due (JAX steps donate their "
        "params and state). `between steps` (JAX): `DynamicAlignment(in_step=False)`, the step holds no "
        "re-solve and `maxp_jax.SolveBetweenSteps` re-solves after it when due. `groups only` (PyTorch): "
        "AdamW over the per-layer param groups with maxP's rates, maxP not called: the cost of one "
        "learning rate per layer in PyTorch's optimizer, which any per-layer scheme pays. "
        "`one pass` (PyTorch): the same groups stepped by `maxp_torch.optim.AdamW`, one "
        "multi-tensor update over all of them."
        + (
            " `published dynamic/k`: the published maxP (checkout given by `--published`) "
            "re-solving every k steps"
            + (
                "; its GPT multiplies one-hot ids by its tables (the published step measures every "
                "wrapped layer, which a table looked up by ids is not)"
                if args.model == "gpt"
                else ""
            )
            + "."
            if args.published is not None
            else ""
        )
        + "\n\n"
        f"```\n{table}\n```\n\nEnvironment: {json.dumps(env)}\n"
    )
    payload = {"framework": args.framework, "setup": setup, "rows": rows, "environment": env}
    model = "" if args.model == "mlp" else f"-{args.model}"
    name = f"overhead-{args.framework}{model}" + ("-gpu" if args.device == "gpu" else "")
    name += "-vs-published" if args.published is not None else ""
    write_results(args.out, name, payload, markdown, args.json)
    return 0


def _rows(medians: dict[str, tuple[float, float]], peaks: dict[str, float]) -> list[dict[str, Any]]:
    """One result row per configuration: times, ratios to plain, peak memory, the target's verdict."""
    plain, plain_mean = medians["plain"]
    rows = []
    for name, (seconds, mean) in medians.items():
        ratio, mean_ratio = seconds / plain, mean / plain_mean
        target = TARGETS.get(name)
        verdict = "" if target is None else ("met" if max(ratio, mean_ratio) <= target else "missed")
        peak, plain_peak = _known(peaks.get(name)), _known(peaks.get("plain"))
        rows.append(
            {
                "config": name,
                "median_ms": 1e3 * seconds,
                "ratio": ratio,
                "mean_ms": 1e3 * mean,
                "mean_ratio": mean_ratio,
                "peak_mib": peak,
                "extra_mib": None if peak is None or plain_peak is None else peak - plain_peak,
                "target": target,
                "verdict": verdict,
            }
        )
    return rows


def _known(value: float | None) -> float | None:
    """``value``, or None when it is missing (None or NaN)."""
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    raise SystemExit(main())
