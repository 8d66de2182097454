"""Re-solve time of the stability LP against the published big-M MILP, in one run.

Run ``python -m benchmarks.solver`` (add ``--json`` to print the JSON too). For chains of
4, 32, 128 and 512 layers and a 12-block transformer-shaped DAG it times

* ``highs``: :meth:`StabilityLP.solve_packed` with new random alignments each call (the
  model is built once; the median is taken after warm-up),
* ``highs drift``: the same with alignments that drift a little between calls, as
  smoothed measurements do during training (warm starts pay off),
* ``clarabel``: the same LP through cvxpy + CLARABEL (fewer calls),
* ``big-M``: the published formulation (M = 10) rebuilt and solved by PuLP + CBC per call,

and checks that big-M reaches the LP's ``sum(c)``. Results go to
``benchmarks/results/solver.md`` and ``solver.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.bigm_baseline import solve_bigm
from benchmarks.graphs import chain_graph, drifting_alignments, random_alignments, transformer_graph
from benchmarks.report import write_results
from maxp_core import OpGraph, StabilityLP
from maxp_core.formulation import pack_numbers
from maxp_core.text import format_table

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS_AT_128 = 1.0
TARGET_SPEEDUP_AT_128 = 100.0


def _cases(sizes: list[int], blocks: int) -> list[tuple[str, OpGraph]]:
    cases = [(f"chain {n}", chain_graph(n)) for n in sizes]
    cases.append((f"transformer {blocks} blocks", transformer_graph(blocks)))
    return cases


def _median_ms(run: Callable[[np.ndarray], Any], inputs: list[np.ndarray], warmup: int) -> float:
    for numbers in inputs[:warmup]:
        run(numbers)
    times = []
    for numbers in inputs[warmup:]:
        start = time.perf_counter()
        run(numbers)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_case(
    name: str, graph: OpGraph, optimizer: str, repeats: int, baseline_repeats: int, seed: int
) -> dict[str, Any]:
    """Time one graph with every method; same random alignments for all."""
    rng = np.random.default_rng(seed)
    warmup = max(3, repeats // 10)
    inputs = [pack_numbers(graph, **random_alignments(len(graph), rng)) for _ in range(warmup + repeats)]
    drift = [pack_numbers(graph, **al) for al in drifting_alignments(len(graph), warmup + repeats, rng)]
    highs = StabilityLP(graph, optimizer)
    clarabel = StabilityLP(graph, optimizer, solver="clarabel")
    objectives = [highs.solve_packed(numbers).objective for numbers in inputs[:baseline_repeats]]
    row: dict[str, Any] = {
        "case": name,
        "weighted_nodes": len(graph.weighted),
        "nodes": len(graph),
        "optimizer": optimizer,
        "highs_ms": _median_ms(highs.solve_packed, inputs, warmup),
        "highs_drift_ms": _median_ms(StabilityLP(graph, optimizer).solve_packed, drift, warmup),
        "clarabel_ms": _median_ms(clarabel.solve_packed, inputs[: 2 + max(3, repeats // 20)], 2),
    }
    baseline_times, mismatches = [], 0
    statuses: dict[str, int] = {}
    for numbers, objective in zip(inputs[:baseline_repeats], objectives, strict=True):
        start = time.perf_counter()
        result = solve_bigm(graph, optimizer, numbers)
        baseline_times.append(time.perf_counter() - start)
        statuses[result.status] = statuses.get(result.status, 0) + 1
        if result.objective is None or abs(result.objective - objective) > 1e-5:
            mismatches += 1
    row["bigm_ms"] = 1e3 * statistics.median(baseline_times)
    row["speedup"] = row["bigm_ms"] / row["highs_ms"]
    row["bigm_statuses"] = statuses
    row["bigm_wrong"] = f"{mismatches}/{baseline_repeats}"
    return row


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "highspy": version("highspy"),
        "cvxpy": version("cvxpy"),
        "clarabel": version("clarabel"),
        "pulp": version("pulp"),
    }


def to_markdown(rows: list[dict[str, Any]], env: dict[str, Any], verdict: str) -> str:
    table = format_table(
        [
            (
                r["case"],
                r["weighted_nodes"],
                f"{r['highs_ms']:.3f}",
                f"{r['highs_drift_ms']:.3f}",
                f"{r['clarabel_ms']:.2f}",
                f"{r['bigm_ms']:.1f}",
                f"{r['speedup']:.0f}x",
                r["bigm_wrong"],
            )
            for r in rows
        ],
        ("case", "weighted", "highs ms", "drift ms", "clarabel ms", "big-M ms", "speedup", "big-M wrong"),
    )
    return (
        "# Stability LP re-solve time\n\n"
        "Median wall time of one re-solve (Adam). `highs`: the kept HiGHS models of "
        "`StabilityLP` (both stages: optimum, then the tie rule) with independent random "
        "alignments per call; `drift`: the same with alignments that move by about 0.005 per "
        "call, as smoothed measurements do in training; `clarabel`: the same LP through cvxpy; "
        "`big-M`: the published MILP (M = 10, PuLP + CBC, rebuilt per solve); `speedup`: "
        "big-M over highs, random alignments for both. `big-M wrong`: solves whose status or "
        "sum(c) differ from the LP's.\n\n"
        f"```\n{table}\n```\n\n{verdict}\n\n"
        f"Environment: {json.dumps(env)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.solver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 32, 128, 512])
    parser.add_argument("--blocks", type=int, default=12, help="transformer blocks")
    parser.add_argument("--repeats", type=int, default=200, help="timed re-solves per case")
    parser.add_argument("--baseline-repeats", type=int, default=9, help="big-M solves per case")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--traced-blocks",
        type=int,
        default=24,
        help="blocks of the traced transformer (0 skips; needs torch and jax)",
    )
    args = parser.parse_args(argv)

    rows = []
    cases = _cases(args.sizes, args.blocks)
    for seed, (name, graph) in enumerate(tqdm(cases, desc="solver benchmark", unit="case")):
        rows.append(bench_case(name, graph, args.optimizer, args.repeats, args.baseline_repeats, seed))
    env = environment()
    at_128 = next((r for r in rows if r["case"] == "chain 128"), None)
    verdict = "No 128-layer chain in this run."
    if at_128 is not None:
        ok_ms = at_128["highs_ms"] <= TARGET_MS_AT_128
        ok_speed = at_128["speedup"] >= TARGET_SPEEDUP_AT_128
        verdict = (
            f"At 128 layers: {at_128['highs_ms']:.3f} ms per re-solve with random alignments, "
            f"{at_128['highs_drift_ms']:.3f} ms with drifting ones "
            f"(target <= {TARGET_MS_AT_128} ms: {'met' if ok_ms else 'missed'} with random alignments, "
            f"{'met' if at_128['highs_drift_ms'] <= TARGET_MS_AT_128 else 'missed'} with drifting ones), "
            f"{at_128['speedup']:.0f}x faster than big-M "
            f"(target >= {TARGET_SPEEDUP_AT_128:.0f}x: {'met' if ok_speed else 'missed'})."
        )
    payload: dict[str, Any] = {"rows": rows, "environment": env, "verdict": verdict, "repeats": args.repeats}
    markdown = to_markdown(rows, env, verdict)
    if args.traced_blocks:
        from benchmarks.tracing import measure_traced

        traced_rows, payload["traced_transformer"] = measure_traced(args.traced_blocks, args.repeats)
        table = format_table(traced_rows, ("quantity", f"GPT, {args.traced_blocks} blocks"))
        markdown += (
            f"\n## A traced {args.traced_blocks}-block transformer\n\nThe graph read from one forward "
            "pass in PyTorch and from the jaxpr in JAX (`python -m benchmarks.tracing`), its LP built "
            f"and re-solved with random alignments.\n\n```\n{table}\n```\n"
        )
    write_results(args.out, "solver", payload, markdown, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
