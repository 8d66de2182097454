"""maxp against the published maxP, side by side: a dynamic step, its LP, its measurement, memory.

Run ``python -m benchmarks.measurement --published PATH``, where ``PATH`` is a checkout of the
published maxP (github.com/m-wojnar/maxP; the current release, ``maxp_new``, or a checkout whose
``maxp`` has ``Parametrization``). Both are driven through the same API on the same models, one
CPU thread, re-solving every step: MLPs of width 128 and depth 4, 64 and 256 (batch 64), and the
GPT of :mod:`examples.torch_models` (width 128, 8 and 24 blocks, 16 sequences of 64 tokens,
its tables multiplying one-hot ids on both sides: :func:`one_hot_gpt`), alignment sample 32
rows. Each side runs in its own processes, rounds alternating between them, so drifts in
machine speed hit both alike. Per model and side:

* ``step ms``: ``Parametrization.step`` (the training step itself excluded), median;
* ``LP ms``: the part of it that re-solves the LP (maxp: ``solve_seconds``; published: its
  ``_resolve_dag`` / ``_resolve_chain``), and ``rest ms`` the step without it (the measurement
  and the bookkeeping around it);
* ``floor``: maxp's ``rest`` over one forward pass of the sample it measures on (a measurement
  needs that pass and three products per layer: about four);
* ``extra MiB``: the peak resident memory of training with the side's parametrization over
  training the same model with plain AdamW, each in a fresh process that loaded the same
  libraries (the side's package, and HiGHS for maxp), so what is counted is what training
  with it holds and allocates. The published LP runs the CBC solver as a separate process on
  each solve (pulp's default), whose memory is not counted.
* ``code MiB``: the part of ``extra MiB`` that is file-backed pages (``RssFile`` at the end
  over the plain process's): machine code of library kernels run for the first time (each
  operator a program has not called before maps its share of ``libtorch_cpu``), not data
  the parametrization holds; ``extra - code`` is its anonymous memory, data and copies.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("mlp-4", "mlp-64", "mlp-256", "gpt-8", "gpt-24")
SIDES = ("published", "maxp")
SAMPLE_ROWS = 32
#: Training steps before timing: the first re-solves warm caches (and the published LP's models).
WARMUP_STEPS = 3


def published_package(path: Path) -> Any:
    """The published maxP's package in the checkout at ``path`` (``maxp_new``, else ``maxp``)."""
    sys.path.insert(0, str(path))
    for name in ("maxp_new", "maxp"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Parametrization") and hasattr(module, "ParametrizedModule"):
            return module
    raise SystemExit(
        f"{path} holds no published maxP with Parametrization and ParametrizedModule (looked for "
        "maxp_new and maxp); give a checkout of github.com/m-wojnar/maxP's current release"
    )


def package_of(side: str, published: Path | None) -> Any:
    if side == "maxp":
        import maxp_torch

        return maxp_torch
    assert published is not None
    return published_package(published)


def build(name: str, package: Any) -> tuple[Any, Any, Any, Any]:
    """``(model, batch, loss of the batch, sample_input for tracing)`` built with ``package``'s
    ``ParametrizedModule`` (the same weights for both sides: one seed)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    wrap = package.ParametrizedModule
    if name.startswith("mlp-"):
        width, depth = 128, int(name.removeprefix("mlp-"))
        layers: list[nn.Module] = []
        for i in range(depth):
            role = "embedding" if i == 0 else "readout" if i == depth - 1 else "hidden"
            out = 10 if i == depth - 1 else width
            layers += [wrap(nn.Linear(width, out), width_dim=width, layer_type=role), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        x = torch.randn(64, width)
        y = torch.randint(0, 10, (64,))
        return model, x, lambda: nn.functional.cross_entropy(model(x), y), None
    from examples.torch_models import next_token_loss

    vocab = 256
    model = one_hot_gpt(package, d=128, blocks=int(name.removeprefix("gpt-")), vocab=vocab, ctx=64)
    ids = torch.randint(0, vocab, (16, 64))
    return model, ids, lambda: next_token_loss(model(ids), ids), ids[:1]


def one_hot_gpt(package: Any, d: int, blocks: int, vocab: int, ctx: int) -> Any:
    """The GPT of :mod:`examples.torch_models` with its tables as linear layers on one-hot ids,
    every layer wrapped by ``package``'s ``ParametrizedModule``.

    The published step measures every wrapped layer's input against its weight, which a table
    looked up by token ids is not (it stops with a shape error); a table multiplied by one-hot
    rows is the same model, and both sides measure it as it is.
    """
    import torch
    from torch import nn

    import examples.torch_models as models

    wrap = package.ParametrizedModule
    ours = package.__name__.startswith("maxp_torch")

    def wrap_any(module: Any, width_dim: int, layer_type: str, a: float | None = None) -> Any:
        # The published module takes no exponent of its own; its presets give the scores theirs.
        exponent = {} if a is None or not ours else {"a": a}
        return wrap(module, width_dim=width_dim, layer_type=layer_type, **exponent)

    class Model(models.GPT):
        def __init__(self) -> None:
            super().__init__(d=d, blocks=blocks, vocab=vocab, ctx=ctx)
            self.tok = wrap_any(nn.Linear(vocab, d, bias=False), width_dim=d, layer_type="embedding")
            self.pos = wrap_any(nn.Linear(ctx, d, bias=False), width_dim=d, layer_type="embedding")

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(ids.shape[1], device=ids.device)
            one_hot = nn.functional.one_hot
            x = self.tok(one_hot(ids, vocab).float()) + self.pos(one_hot(positions, ctx).float())
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    # The blocks wrap their layers with the module's ParametrizedModule: the package's, while
    # this model is built, and the module's own again after.
    original = models.ParametrizedModule
    models.ParametrizedModule = wrap_any  # type: ignore[assignment]
    try:
        return Model()
    finally:
        models.ParametrizedModule = original  # type: ignore[misc]


def step_costs(side: str, name: str, repeats: int, published: Path | None) -> dict[str, float]:
    """Median ``step``, ``lp``, ``rest`` and ``forward`` ms of one side on one model."""
    import torch

    torch.set_num_threads(1)
    package = package_of(side, published)
    model, x, loss_of_batch, sample = build(name, package)
    param = package.Parametrization(model, lr_prefactor=1e-3, solve_interval=1, sample_input=sample)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)
    lp_seconds = _lp_timer(side, param)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of_batch().backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        train()
        param.step(x, optimizer)
    times: dict[str, list[float]] = {"step_ms": [], "lp_ms": [], "forward_ms": []}
    # What each side's measurement runs forward: the published one the first samples, maxp
    # as few samples as give it its rows.
    rows = param._measurement.sample if side == "maxp" else x[:SAMPLE_ROWS]
    for _ in range(repeats):
        train()
        lp_seconds.clear()
        start = time.perf_counter()
        param.step(x, optimizer)
        times["step_ms"].append(time.perf_counter() - start)
        times["lp_ms"].append(sum(lp_seconds))
        start = time.perf_counter()
        with torch.no_grad():
            model(rows)
        times["forward_ms"].append(time.perf_counter() - start)
    out = {key: 1e3 * statistics.median(values) for key, values in times.items()}
    rest = [step - lp for step, lp in zip(times["step_ms"], times["lp_ms"], strict=True)]
    out["rest_ms"] = 1e3 * statistics.median(rest)
    return out


def _lp_timer(side: str, param: Any) -> list[float]:
    """A list that collects the seconds each re-solve's LP took on ``param``."""
    seconds: list[float] = []
    if side == "maxp":
        resolve = param._resolving.resolve

        def timed_maxp(x: Any) -> None:
            resolve(x)
            seconds.append(param.solve_seconds)

        param._resolving.resolve = timed_maxp
        return seconds
    for method in ("_resolve_dag", "_resolve_chain"):
        original = getattr(param, method)

        def timed(*args: Any, _original: Any = original) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args)
            finally:
                seconds.append(time.perf_counter() - start)

        setattr(param, method, timed)
    return seconds


def peak_mib(side: str, name: str, with_maxp: bool, steps: int, published: Path | None) -> float:
    """Peak resident memory of training ``name`` for ``steps`` steps, with the side's dynamic
    parametrization or with plain AdamW over the same model (the package imported either way)."""
    import torch

    from benchmarks.overhead import peak_memory_mib

    torch.set_num_threads(1)
    package = package_of(side, published)
    if side == "maxp":
        import highspy  # noqa: F401  (what maxp's LP loads: a library, in both processes)
    model, x, loss_of_batch, sample = build(name, package)
    if with_maxp:
        param = package.Parametrization(model, lr_prefactor=1e-3, solve_interval=1, sample_input=sample)
        optimizer = torch.optim.AdamW(param.param_groups)
        param.capture_initial(x)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of_batch().backward()
        optimizer.step()
        if with_maxp:
            param.step(x, optimizer)
    return peak_memory_mib("torch", "cpu")


def file_backed_mib() -> float:
    """This process's resident file-backed pages (libraries' code and read-only data), MiB."""
    found = re.search(r"RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else math.nan


def run_worker(kind: str, side: str, name: str, repeats: int, published: str) -> dict[str, float]:
    """One side's figures on one model, in a fresh process (``kind``: ``step``, ``plain`` or ``maxp``)."""
    command = [sys.executable, "-m", "benchmarks.versus_published", kind, side, name, str(repeats), published]
    # As in benchmarks.overhead: freed large blocks go back to the system, so the resident set
    # follows what is allocated.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(
    published: Path, rounds: int, repeats: int, memory: bool, models: tuple[str, ...]
) -> dict[str, Any]:
    """Every figure of both sides on ``models``: ``{model: {side: {figure: value}}}``."""
    from tqdm import tqdm

    jobs = [(model, side) for _ in range(rounds) for model in models for side in SIDES]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {m: {s: [] for s in SIDES} for m in models}
    for model, side in tqdm(jobs, desc="published vs maxp, step times", unit="run"):
        samples[model][side].append(run_worker("step", side, model, repeats, str(published)))
    figures: dict[str, Any] = {
        model: {
            side: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for side, runs in by_side.items()
        }
        for model, by_side in samples.items()
    }
    if memory:
        memory_jobs = [(m, s, kind) for m in models for s in SIDES for kind in ("plain", "maxp")]
        peaks: dict[tuple[str, str, str], dict[str, float]] = {}
        for model, side, kind in tqdm(memory_jobs, desc="published vs maxp, peak memory", unit="run"):
            peaks[model, side, kind] = run_worker(kind, side, model, 10, str(published))
        for model, side, _ in memory_jobs:
            with_it, plain = peaks[model, side, "maxp"], peaks[model, side, "plain"]
            figures[model][side]["extra_mib"] = with_it["peak_mib"] - plain["peak_mib"]
            figures[model][side]["code_mib"] = with_it["file_mib"] - plain["file_mib"]
    return figures


def table(figures: dict[str, Any]) -> str:
    """The side-by-side table: both sides' step and its parts, the ratios, the floor, memory."""
    from maxp_core.text import format_table

    rows = []
    for model, sides in figures.items():
        pub, ours = sides["published"], sides["maxp"]
        memory = "extra_mib" in ours
        rows.append(
            (
                model,
                f"{pub['step_ms']:.1f}",
                f"{ours['step_ms']:.1f}",
                f"{pub['step_ms'] / ours['step_ms']:.1f}x",
                f"{pub['lp_ms'] / ours['lp_ms']:.0f}x" if ours["lp_ms"] > 0 else "-",
                f"{pub['rest_ms']:.2f} / {ours['rest_ms']:.2f}",
                f"{pub['rest_ms'] / ours['rest_ms']:.1f}x",
                f"{ours['rest_ms'] / ours['forward_ms']:.1f}",
                f"{pub['extra_mib']:+.0f} / {ours['extra_mib']:+.0f}" if memory else "-",
                f"{pub['code_mib']:+.0f} / {ours['code_mib']:+.0f}" if "code_mib" in ours else "-",
            )
        )
    header = (
        "model",
        "published step ms",
        "maxp step ms",
        "step ratio",
        "LP ratio",
        "rest ms (pub / maxp)",
        "rest ratio",
        "maxp floor",
        "extra MiB (pub / maxp)",
        "of it code MiB (pub / maxp)",
    )
    return format_table(rows, header)


def _worker(argv: list[str]) -> None:
    kind, side, name, repeats, published = argv[0], argv[1], argv[2], int(argv[3]), Path(argv[4])
    sys.path[0:1] = [str(ROOT)]  # the project, not this script's folder
    if kind == "step":
        print(json.dumps(step_costs(side, name, repeats, published)))
    else:
        peak = peak_mib(side, name, kind == "maxp", repeats, published)
        print(json.dumps({"peak_mib": peak, "file_mib": file_backed_mib()}))


if __name__ == "__main__":
    _worker(sys.argv[1:])
