"""Time to discover, build and re-solve the graph of a 24-block transformer, per framework.

Run ``python -m benchmarks.tracing`` (``--blocks``, ``--json``): traces a GPT-style
model (token and position embeddings, attention with marked scores, SwiGLU MLP,
readout) in PyTorch and in JAX, checks both give the same graph, builds the LP and
times its re-solve with random alignments. Writes ``benchmarks/results/tracing.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results
from maxp_core import StabilityLP
from maxp_core.text import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure_traced(blocks: int, repeats: int) -> tuple[list[tuple[str, str]], dict[str, object]]:
    """Trace the GPT in both frameworks, build its LP and time re-solves: table rows and JSON."""
    import jax
    import jax.numpy as jnp
    import torch

    import maxp_jax
    from examples.flax_models import FlaxGPT, flax_to_torch_name, gpt_rules
    from examples.torch_models import GPT
    from maxp_core import default_ab
    from maxp_core.render import canonical_form
    from maxp_torch import ParametrizedModule
    from maxp_torch.trace import trace_graph

    model = GPT(blocks=blocks)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ParametrizedModule)]
    exponents = [
        (m.a if m.a is not None else default_ab("mup", m.layer_type)[0], default_ab("mup", m.layer_type)[1])
        for _, m in layers
    ]
    ids = torch.randint(0, 50, (2, 16))
    torch_trace_s, torch_graph = _seconds(lambda: trace_graph(model, layers, exponents, ids))

    flax_model = FlaxGPT(blocks=blocks)
    jids = jnp.zeros((2, 16), jnp.int32)
    params = flax_model.init(jax.random.key(0), jids)
    spec = maxp_jax.MaxPSpec(params, gpt_rules())  # graph by roles; discovery is timed alone below
    jax_trace_s, jax_graph = _seconds(lambda: maxp_jax.discover_graph(spec, flax_model.apply, params, jids))
    same = canonical_form(jax_graph, flax_to_torch_name) == canonical_form(torch_graph)

    build_s, lp = _seconds(lambda: StabilityLP(torch_graph, "adam"))
    first_s, _ = _seconds(lp.solve)
    rng = np.random.default_rng(0)
    n = len(torch_graph)
    times = []
    for _ in range(repeats):
        numbers = {
            "alpha": rng.uniform(0.3, 1, n),
            "omega": rng.uniform(0.3, 0.5, n),
            "u": rng.uniform(0.3, 1, n),
        }
        start = time.perf_counter()
        lp.solve(**numbers)
        times.append(time.perf_counter() - start)
    resolve_ms = 1e3 * statistics.median(times)
    rows = [
        ("nodes (weighted)", f"{n} ({len(torch_graph.weighted)})"),
        ("largest in-degree", str(max(len(x.preds) for x in torch_graph.nodes))),
        ("trace, PyTorch", f"{1e3 * torch_trace_s:.1f} ms"),
        ("trace, JAX (jaxpr)", f"{1e3 * jax_trace_s:.1f} ms"),
        ("same graph in both", str(same)),
        ("build LP", f"{1e3 * build_s:.1f} ms"),
        ("first solve", f"{1e3 * first_s:.1f} ms"),
        ("re-solve (median)", f"{resolve_ms:.2f} ms"),
    ]
    payload = {
        "blocks": blocks,
        "nodes": n,
        "weighted": len(torch_graph.weighted),
        "trace_torch_s": torch_trace_s,
        "trace_jax_s": jax_trace_s,
        "same_graph": same,
        "build_s": build_s,
        "first_solve_s": first_s,
        "resolve_median_ms": resolve_ms,
    }
    return rows, payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracing", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows, payload = measure_traced(args.blocks, args.repeats)
    table = format_table(rows, ("quantity", f"GPT, {args.blocks} blocks"))
    markdown = f"# Graph discovery and LP for a {args.blocks}-block transformer\n\n```\n{table}\n```\n"
    write_results(args.out, "tracing", payload, markdown, args.json)
    return 0 if payload["same_graph"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
