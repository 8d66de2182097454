"""Graphs the benchmarks solve: chains and a transformer-shaped DAG."""

from __future__ import annotations

import numpy as np

from maxp_core import Node, OpGraph, chain


def random_alignments(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Alignments of the kind measured in training: alpha and u in [0.3, 1], omega in [0.3, 0.5]."""
    return {
        "alpha": rng.uniform(0.3, 1.0, count),
        "omega": rng.uniform(0.3, 0.5, count),
        "u": rng.uniform(0.3, 1.0, count),
    }


def drifting_alignments(
    count: int, steps: int, rng: np.random.Generator, step_size: float = 0.005
) -> list[dict[str, np.ndarray]]:
    """A random walk of alignments, as smoothed measurements move between re-solves."""
    low = {"alpha": 0.3, "omega": 0.3, "u": 0.3}
    high = {"alpha": 1.0, "omega": 0.5, "u": 1.0}
    current = random_alignments(count, rng)
    walk = []
    for _ in range(steps):
        current = {
            k: np.clip(v + rng.normal(0.0, step_size, count), low[k], high[k]) for k, v in current.items()
        }
        walk.append(current)
    return walk


def chain_graph(num_layers: int) -> OpGraph:
    """A muP chain of ``num_layers`` weighted layers."""
    return chain(num_layers)


def transformer_graph(num_blocks: int) -> OpGraph:
    """A pre-norm transformer's op graph under muP.

    Each block: ``q, k, v`` read the residual stream; ``scores = q k^T`` (activation-only,
    ``a = 1`` for ``1/d`` attention, a contraction over the head dimension);
    ``ctx = scores v`` (activation-only, multiplied); ``o`` projects back and is added to
    the stream (an activation-only node with ``merge="min"``); a SwiGLU MLP (``up``,
    ``gate`` multiplied, then ``down``) is added the same way. An embedding feeds the
    first block and a readout reads the last stream.
    """
    hidden = {"a": 0.0, "b": 0.5}
    nodes = [Node("embed", a=-0.5, b=0.5)]
    stream = "embed"
    for i in range(num_blocks):
        p = f"block{i}."
        nodes += [
            Node(p + "q", preds=(stream,), **hidden),
            Node(p + "k", preds=(stream,), **hidden),
            Node(p + "v", preds=(stream,), **hidden),
            Node(
                p + "scores",
                a=1.0,
                has_weight=False,
                preds=(p + "q", p + "k"),
                merge="product",
                contraction=True,
            ),
            Node(p + "ctx", a=0.0, has_weight=False, preds=(p + "scores", p + "v"), merge="product"),
            Node(p + "o", preds=(p + "ctx",), **hidden),
            Node(p + "attn_res", a=0.0, has_weight=False, preds=(stream, p + "o")),
            Node(p + "up", preds=(p + "attn_res",), **hidden),
            Node(p + "gate", preds=(p + "attn_res",), **hidden),
            Node(p + "swiglu", a=0.0, has_weight=False, preds=(p + "up", p + "gate"), merge="product"),
            Node(p + "down", preds=(p + "swiglu",), **hidden),
            Node(p + "mlp_res", a=0.0, has_weight=False, preds=(p + "attn_res", p + "down")),
        ]
        stream = p + "mlp_res"
    nodes.append(Node("readout", a=0.5, b=0.5, preds=(stream,)))
    return OpGraph(nodes)
