"""What one alignment measurement costs: time, its distance to the floor, operations and host reads.

Run ``python -m benchmarks.measurement`` (``--framework torch|jax``, ``--device gpu``,
``--json``). For an MLP of width 128 and depth 64 (batch 64) and the GPT of
:mod:`examples.torch_models` (width 128, 8 blocks, 16 sequences of 64 tokens) with dynamic maxP
re-solving every step it reports the median time of a training step (AdamW over maxP's groups),
of a measurement (the forward pass on the sample, the alignments, the one copy to the host) and
of a whole ``Parametrization.step`` (measurement, LP, rates), and, from ``torch.profiler``, the
operations one measurement dispatches and its host reads (``.item()``-like calls on CPU; kernel
launches and synchronisations on a GPU). ``forward ms`` is one forward pass of the alignment
sample and ``floor ratio`` the measurement over it: a measurement needs that forward pass and
three products of the sample's rows with each weight, about four forward passes.

``--framework jax`` times one jitted measurement (``AlignmentResolver.measure``) of the MLP of
width 1024 and depth 8 (sample 64 rows) and of :class:`examples.flax_models.FlaxGPT` (width 128,
8 blocks), one jitted forward pass of the sample, and counts the fusions XLA compiled.

``--published PATH`` times the published maxP (a checkout of it) and maxp side by side on the
same models: :mod:`benchmarks.versus_published`, results in ``measurement-vs-published-cpu``.

``--compare-to REV`` runs the same program on another revision of ``maxp_torch`` (a
``git worktree``) in alternating subprocess rounds and reports the ratio of each figure:
the before/after table of a change. Results go to ``benchmarks/results/measurement-<device>``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"torch": ("mlp-64", "gpt-8"), "jax": ("mlp-1024x8", "gpt-8")}
#: Figures reported per model and version; ``ms`` are medians.
FIGURES = {
    "torch": ("train_ms", "measure_ms", "forward_ms", "floor_ratio", "step_ms", "ops", "host_reads"),
    "jax": ("measure_ms", "forward_ms", "floor_ratio", "fusions"),
}


def _model(name: str, device: str) -> tuple[Any, Any, Any, Any]:
    """``(model, batch, loss of the batch, sample_input for tracing)``."""
    import torch
    from torch import nn

    from maxp_torch import ParametrizedModule

    torch.manual_seed(0)
    if name == "mlp-64":
        width, depth = 128, 64
        layers: list[nn.Module] = []
        for i in range(depth):
            role = "embedding" if i == 0 else "readout" if i == depth - 1 else "hidden"
            out = 10 if i == depth - 1 else width
            layers.append(ParametrizedModule(nn.Linear(width, out), width_dim=width, layer_type=role))
            layers.append(nn.ReLU())
        model = nn.Sequential(*layers[:-1]).to(device)
        x = torch.randn(64, width, device=device)
        y = torch.randint(0, 10, (64,), device=device)
        return model, x, lambda: nn.functional.cross_entropy(model(x), y), None
    from examples.torch_models import GPT, next_token_loss

    vocab = 256
    model = GPT(d=128, blocks=8, vocab=vocab, ctx=64).to(device)
    ids = torch.randint(0, vocab, (16, 64), device=device)

    return model, ids, lambda: next_token_loss(model(ids), ids), ids[:1]


def costs(name: str, device: str, repeats: int) -> dict[str, float]:
    """The :data:`FIGURES` of one model on the ``maxp_torch`` first on ``sys.path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from maxp_torch import Parametrization

    if device == "cpu":
        torch.set_num_threads(1)
    model, x, loss_of_batch, sample = _model(name, device)
    param = Parametrization(model, lr_prefactor=1e-3, solve_interval=1, sample_input=sample)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of_batch().backward()
        optimizer.step()

    def timed(run: Any) -> float:
        sync()
        start = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - start

    for _ in range(3):
        train()
        param.step(x, optimizer)
    times: dict[str, list[float]] = {"train_ms": [], "measure_ms": [], "step_ms": []}
    sample = param._measurement.sample

    def forward() -> None:
        with torch.no_grad():
            model(**sample) if isinstance(sample, dict) else model(sample)

    times["forward_ms"] = []
    for _ in range(repeats):
        times["train_ms"].append(timed(train))
        times["measure_ms"].append(timed(lambda: param._measure(x)))
        times["forward_ms"].append(timed(forward))
        times["step_ms"].append(timed(lambda: param.step(x, optimizer)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        param._measure(x)
        sync()
    events = prof.events()
    if device == "cuda":
        ops = sum(e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC") for e in events)
        reads = sum(
            e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync") for e in events
        )
    else:
        ops = sum(e.name.startswith("aten::") for e in events)
        reads = sum(e.name == "aten::_local_scalar_dense" for e in events)
    out = {key: 1e3 * statistics.median(values) for key, values in times.items()}
    out["floor_ratio"] = out["measure_ms"] / out["forward_ms"]
    return {**out, "ops": float(ops), "host_reads": float(reads)}


def jax_costs(name: str, repeats: int) -> dict[str, float]:
    """The JAX :data:`FIGURES` of one model on the ``maxp_jax`` first on ``sys.path``."""
    import jax
    import jax.numpy as jnp

    import maxp_jax
    from maxp_jax.dynamic import AlignmentResolver

    if name == "mlp-1024x8":
        from tests.jax.models import mlp_and_spec

        model, params, spec = mlp_and_spec(width=1024, depth=8)
        x = jax.random.normal(jax.random.key(1), (64, 16))
    else:
        from examples.flax_models import FlaxGPT, gpt_rules

        model = FlaxGPT(d=128, blocks=8, vocab=256, ctx=64)
        x = jax.random.randint(jax.random.key(1), (1, 64), 0, 256)
        params = model.init(jax.random.key(0), x)
        spec = maxp_jax.MaxPSpec(params, gpt_rules(), apply_fn=model.apply, sample_input=x)
    params = maxp_jax.abc_init(spec, params, jax.random.key(0))
    dynamic = maxp_jax.DynamicAlignment(model.apply, x, sample_size=64)
    state = maxp_jax.scale_by_maxp(spec, dynamic).init(params)
    moved = jax.tree.map(lambda p: p + 0.01 * jnp.sign(p), params)
    resolver = AlignmentResolver(spec, dynamic)
    measure = jax.jit(lambda p, s: resolver.measure(p, s))
    forward = jax.jit(model.apply)

    def timed(run: Any) -> float:
        jax.block_until_ready(run())
        start = time.perf_counter()
        jax.block_until_ready(run())
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"measure_ms": [], "forward_ms": []}
    for _ in range(repeats):
        times["measure_ms"].append(timed(lambda: measure(moved, state)))
        times["forward_ms"].append(timed(lambda: forward(moved, x)))
    out = {key: 1e3 * statistics.median(values) for key, values in times.items()}
    out["floor_ratio"] = out["measure_ms"] / out["forward_ms"]
    out["fusions"] = float(measure.lower(moved, state).compile().as_text().count("fusion("))
    return out


def _worker_round(tree: Path, framework: str, device: str, repeats: int) -> dict[str, dict[str, float]]:
    """The costs of every model in a subprocess whose packages come from ``tree``."""
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", str(tree), framework, device, str(repeats)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median_of_rounds(
    rounds: list[dict[str, dict[str, float]]], framework: str
) -> dict[str, dict[str, float]]:
    return {
        model: {f: statistics.median(r[model][f] for r in rounds) for f in FIGURES[framework]}
        for model in MODELS[framework]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measurement", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="subprocess rounds per version")
    parser.add_argument("--compare-to", metavar="REV", help="a git revision to measure side by side")
    parser.add_argument(
        "--published",
        metavar="PATH",
        type=Path,
        help="a checkout of the published maxP: time both side by side (benchmarks.versus_published)",
    )
    parser.add_argument("--no-memory", action="store_true", help="with --published: skip the peak memory")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from benchmarks.report import write_results
    from maxp_core.text import format_table

    if args.published:
        return _versus_published(args)
    device = "cuda" if args.device == "gpu" else "cpu"
    versions = {"now": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        if args.compare_to:
            before = Path(scratch) / "before"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(before), args.compare_to],
                check=True, cwd=ROOT, capture_output=True,
            )  # fmt: skip
            versions = {args.compare_to: before, "now": ROOT}
        try:
            rounds: dict[str, list[dict[str, dict[str, float]]]] = {v: [] for v in versions}
            for _ in tqdm(range(args.rounds), desc="measurement rounds", unit="round"):
                for version, tree in versions.items():
                    rounds[version].append(_worker_round(tree, args.framework, device, args.repeats))
        finally:
            if args.compare_to:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    figures_of = FIGURES[args.framework]
    medians = {version: _median_of_rounds(r, args.framework) for version, r in rounds.items()}
    rows = []
    for model in MODELS[args.framework]:
        for version in versions:
            figures = medians[version][model]
            rows.append((model, version, *(_shown(f, figures[f]) for f in figures_of)))
        if args.compare_to:
            old, new = medians[args.compare_to][model], medians["now"][model]
            rows.append(
                (model, "before / now", *(f"{old[f] / new[f]:.2f}x" if new[f] else "-" for f in figures_of))
            )
    table = format_table(rows, ("model", "version", *(f.replace("_", " ") for f in figures_of)))
    if args.framework == "jax":
        return _report_jax(args, table, medians)
    env = {"python": platform.python_version(), "machine": platform.machine(), "device": args.device}
    ops = "CUDA kernel launches" if device == "cuda" else "aten operations dispatched (nested ones included)"
    reads = "synchronising CUDA calls" if device == "cuda" else "scalar reads (.item())"
    markdown = (
        f"# One alignment measurement in PyTorch ({args.device})\n\n"
        "`mlp-64`: MLP width 128, depth 64, batch 64. `gpt-8`: the example GPT, width 128, 8 blocks, "
        "16 sequences of 64 tokens. Dynamic maxP re-solving every step, alignment sample 32 rows. "
        "`train ms`: a training step (AdamW over maxP's groups); `measure ms`: one measurement (the "
        "sample's forward pass, the alignments, the copy to the host); `maxp step ms`: "
        f"`Parametrization.step` (measurement, LP, rates); `ops`: {ops}; `host reads`: {reads}, per "
        f"measurement. Medians of {args.rounds} rounds of {args.repeats} steps"
        + (", versions alternating round by round" if args.compare_to else "")
        + (", one CPU thread" if device == "cpu" else "")
        + f".\n\n```\n{table}\n```\n\nEnvironment: {json.dumps(env)}\n"
    )
    payload = {"medians": medians, "environment": env, "compare_to": args.compare_to}
    write_results(args.out, f"measurement-{args.device}", payload, markdown, args.json)
    return 0


def _shown(figure: str, value: float) -> str:
    return f"{value:.2f}" if figure == "floor_ratio" else f"{value:.{1 if figure.endswith('ms') else 0}f}"


def _report_jax(args: argparse.Namespace, table: str, medians: dict[str, Any]) -> int:
    from benchmarks.report import write_results

    env = {"python": platform.python_version(), "machine": platform.machine(), "device": args.device}
    markdown = (
        f"# One alignment measurement in JAX ({args.device})\n\n"
        "`mlp-1024x8`: MLP width 1024, depth 8; `gpt-8`: the example flax GPT, width 128, 8 blocks; "
        "alignment sample 64 rows. `measure ms`: one jitted measurement; `forward ms`: one jitted "
        "forward pass of the sample; `floor ratio`: their ratio (the floor is about 4); `fusions`: "
        f"in the compiled measurement. Medians of {args.rounds} rounds of {args.repeats} calls"
        + (", versions alternating round by round" if args.compare_to else "")
        + f".\n\n```\n{table}\n```\n\nEnvironment: {json.dumps(env)}\n"
    )
    payload = {"medians": medians, "environment": env, "compare_to": args.compare_to}
    write_results(args.out, f"measurement-jax-{args.device}", payload, markdown, args.json)
    return 0


def _versus_published(args: argparse.Namespace) -> int:
    from benchmarks import versus_published
    from benchmarks.report import write_results

    if args.framework != "torch" or args.device != "cpu":
        raise SystemExit("--published compares the PyTorch backends on the CPU: drop --framework, --device")
    figures = versus_published.compare(
        args.published.resolve(), args.rounds, args.repeats, not args.no_memory, versus_published.MODELS
    )
    table = versus_published.table(figures)
    env = {"python": platform.python_version(), "machine": platform.machine(), "device": "cpu"}
    doc = (versus_published.__doc__ or "").split("\n\n", 1)[1]
    markdown = (
        "# maxp and the published maxP, side by side (PyTorch, CPU)\n\n"
        f"{doc.strip()}\n\nMedians of {args.rounds} rounds of {args.repeats} steps per side.\n\n"
        f"```\n{table}\n```\n\nPublished checkout: `{args.published}`. Environment: {json.dumps(env)}\n"
    )
    payload = {"figures": figures, "environment": env, "published": str(args.published)}
    write_results(args.out, "measurement-vs-published-cpu", payload, markdown, args.json)
    return 0


def _worker(argv: list[str]) -> None:
    tree, framework, device, repeats = Path(argv[0]), argv[1], argv[2], int(argv[3])
    # This tree's packages first; not the script's own folder, whose modules would shadow others.
    sys.path[0:1] = [str(tree), str(ROOT)]
    if framework == "jax":
        print(json.dumps({model: jax_costs(model, repeats) for model in MODELS["jax"]}))
    else:
        print(json.dumps({model: costs(model, device, repeats) for model in MODELS["torch"]}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2:])
    else:
        raise SystemExit(main())
