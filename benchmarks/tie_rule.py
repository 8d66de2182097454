"""Which optimal ``c`` the stability LP returns on a tie: ``tie_rule="preset"`` against ``"later"``.

Run ``python -m benchmarks.tie_rule`` (``--json`` prints the JSON too, ``--quick`` a smaller
run). Three pieces of evidence, each for both rules:

* **LP instances.** A GPT block whose value projection ``v`` starts at zero and whose output
  projection ``o`` has the measured alignment ``(0, 0.5, 1)``, and random instances of
  :mod:`tests.core.strategies` (random graphs, optimizers, pins and alignments). The
  reference is the preset's ``c``: the same graph solved with the ``"full"`` alignments
  ``(1, 0.5, 1)`` everywhere, as the adapters build it. Counted: how often the rules pick
  different ``c`` and by how much, how far each lands from the preset's ``c``, how often
  an embedding's ``c`` leaves its preset value, and whether HiGHS and CLARABEL agree.
* **Coordinate check.** ``examples.torch_models.GPT`` (one block, ``v`` zero at
  initialization, ``o`` overridden to ``(0, 0.5, 1)``) at widths 64-512, 3 AdamW steps on a
  fixed batch with cross-entropy; the log-log slope of every op's update against width.
* **Training.** The same GPT at width 256 on next-character prediction
  (:func:`examples.common.char_split`), 200 AdamW steps, with the override above (fixed
  rates) and with measured alignments (re-solved every 10 steps); final training and
  held-out loss.

Results go to ``benchmarks/results/tie_rule.md`` and ``tie_rule.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_results
from maxp_core import InfeasibleError, Node, OpGraph, StabilityLP
from maxp_core.coordcheck import SLOPE_TOLERANCE, loglog_slope
from maxp_core.graph import alignment_preset
from maxp_core.text import format_table

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("preset", "later")
FULL = dict(zip(("alpha", "omega", "u"), alignment_preset("full"), strict=True))
O_MEASURED = (0.0, 0.5, 1.0)
#: ``c`` closer than this count as the same.
SAME = 1e-6


def attention_graph(o_align: tuple[float, float, float] = O_MEASURED, v_b: float = math.inf) -> OpGraph:
    """Embedding, ``q, k, v``, scores (a contraction), ``ctx = scores v``, ``o``, readout."""
    return OpGraph(
        [
            Node("emb", a=-0.5, b=0.5, **FULL),
            *(Node(n, a=0.0, b=0.5 if n != "v" else v_b, preds=("emb",), **FULL) for n in ("q", "k", "v")),
            Node(
                "scores", a=1.0, has_weight=False, preds=("q", "k"), merge="product", contraction=True, **FULL
            ),
            Node("ctx", a=0.0, has_weight=False, preds=("scores", "v"), merge="product", zero_inputs=("v",)),
            Node(
                "o", a=0.0, b=0.5, preds=("ctx",), **dict(zip(("alpha", "omega", "u"), o_align, strict=True))
            ),
            Node("out", a=0.5, b=0.5, preds=("o",), **FULL),
        ]
    )


def preset_graph(graph: OpGraph) -> OpGraph:
    """``graph`` with the ``"full"`` alignments on every node: what the adapters start from."""
    n = len(graph)
    return graph.with_numbers(**{k: [v] * n for k, v in FULL.items()})


def measured_numbers(graph: OpGraph) -> dict[str, list[float]]:
    return {k: [getattr(node, k) for node in graph.nodes] for k in FULL}


def draw_instances(count: int) -> list[Any]:
    """``count`` distinct instances from the property tests' strategies, the same on every run."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.core.strategies import chains, dags, instances

    drawn: dict[Any, Any] = {}

    @settings(
        max_examples=2 * count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(instances(st.one_of(chains(), dags())))
    def collect(inst: Any) -> None:
        key = (
            repr(inst.graph.nodes),
            inst.optimizer,
            inst.feature_learning,
            repr(sorted(inst.c_fixed.items())),
        )
        drawn.setdefault(key, inst)

    collect()
    return list(drawn.values())[:count]


def _solve(graph: OpGraph, inst: Any, rule: str, solver: str, **numbers: Any) -> dict[str, float] | None:
    lp = StabilityLP(
        graph,
        inst.optimizer,
        feature_learning=inst.feature_learning,
        c_fixed=inst.c_fixed,
        solver=solver,
        tie_rule=rule,
    )
    try:
        return lp.solve(**numbers).c
    except InfeasibleError:
        return None


def compare_instance(inst: Any, clarabel: bool) -> dict[str, Any]:
    """Both rules on one instance: the LP is built on the preset graph (its first solve is
    the reference) and re-solved with the instance's alignments."""
    preset = preset_graph(inst.graph)
    measured = measured_numbers(inst.graph)
    reference = _solve(preset, inst, "later", "highs")
    picked = {rule: _solve(preset, inst, rule, "highs", **measured) for rule in RULES}
    row: dict[str, Any] = {"feasible": picked["later"] is not None, "has_preset": reference is not None}
    if picked["later"] is None or picked["preset"] is None:
        return row
    names = list(picked["later"])
    c = {rule: np.array([picked[rule][k] for k in names]) for rule in RULES}
    row["dc"] = float(np.max(np.abs(c["preset"] - c["later"])))
    if reference is not None:
        ref = np.array([reference[k] for k in names])
        sources = [k for k, name in enumerate(names) if not inst.graph.node(name).preds]
        for rule in RULES:
            row[f"dist_{rule}"] = float(np.max(np.abs(c[rule] - ref)))
            row[f"l1_{rule}"] = float(np.sum(np.abs(c[rule] - ref)))
            row[f"emb_moved_{rule}"] = bool(np.any(np.abs(c[rule][sources] - ref[sources]) > SAME))
    if clarabel:
        other = _solve(preset, inst, "preset", "clarabel", **measured)
        row["clarabel_gap"] = (
            math.inf if other is None else float(max(abs(other[k] - picked["preset"][k]) for k in names))
        )
    return row


def lp_evidence(count: int, clarabel_count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attention block and ``count`` random instances; returns (attention, summary)."""
    lps = {rule: StabilityLP(attention_graph(tuple(FULL.values())), tie_rule=rule) for rule in RULES}
    o_measured = {k: {"o": v} for k, v in zip(FULL, O_MEASURED, strict=True)}
    attention = {
        "preset_c": lps["later"].solve().c,
        **{rule: lps[rule].solve(**o_measured).c for rule in RULES},
    }
    start = time.perf_counter()
    rows = [compare_instance(inst, k < clarabel_count) for k, inst in enumerate(draw_instances(count))]
    solved = [r for r in rows if "dc" in r]
    anchored = [r for r in solved if "dist_preset" in r]
    gaps = [r["clarabel_gap"] for r in solved if "clarabel_gap" in r]

    def share(key: str) -> int:
        return sum(1 for r in anchored if r[key])

    summary = {
        "instances": len(rows),
        "feasible": len(solved),
        "with_preset_c": len(anchored),
        "differ": sum(1 for r in solved if r["dc"] > SAME),
        "max_dc": max((r["dc"] for r in solved), default=0.0),
        "mean_dc_when_differ": float(np.mean([r["dc"] for r in solved if r["dc"] > SAME] or [0.0])),
        "seconds": time.perf_counter() - start,
        "clarabel_checked": len(gaps),
        "clarabel_max_gap": max(gaps, default=0.0),
    }
    for rule in RULES:
        summary[f"at_preset_{rule}"] = sum(1 for r in anchored if r[f"dist_{rule}"] <= SAME)
        summary[f"mean_dist_{rule}"] = float(np.mean([r[f"dist_{rule}"] for r in anchored] or [0.0]))
        summary[f"max_dist_{rule}"] = max((r[f"dist_{rule}"] for r in anchored), default=0.0)
        summary[f"mean_l1_{rule}"] = float(np.mean([r[f"l1_{rule}"] for r in anchored] or [0.0]))
        summary[f"emb_moved_{rule}"] = share(f"emb_moved_{rule}")
    summary["later_farther"] = sum(1 for r in anchored if r["l1_later"] > r["l1_preset"] + SAME)
    summary["preset_farther"] = sum(1 for r in anchored if r["l1_preset"] > r["l1_later"] + SAME)
    return attention, summary


def resolve_times(repeats: int) -> list[dict[str, Any]]:
    """Median re-solve time of each rule with drifting alignments (the kept HiGHS models)."""
    from benchmarks.graphs import chain_graph, drifting_alignments, transformer_graph
    from maxp_core.formulation import pack_numbers

    rows = []
    for name, graph in (("chain 128", chain_graph(128)), ("transformer 12 blocks", transformer_graph(12))):
        walk = drifting_alignments(len(graph), repeats + 10, np.random.default_rng(0))
        inputs = [pack_numbers(graph, **al) for al in walk]
        lps = {rule: StabilityLP(graph, tie_rule=rule) for rule in RULES}
        times: dict[str, list[float]] = {rule: [] for rule in RULES}
        for k, numbers in enumerate(inputs):
            for rule in RULES:  # interleaved, so that load on the machine hits both alike
                start = time.perf_counter()
                lps[rule].solve_packed(numbers)
                if k >= 10:
                    times[rule].append(time.perf_counter() - start)
        rows.append({"case": name, **{f"{rule}_ms": 1e3 * float(np.median(times[rule])) for rule in RULES}})
    return rows


# --- PyTorch ---------------------------------------------------------------------------------


def gpt_rates(param: Any, rule: str) -> dict[str, float]:
    """``c`` per layer of a :class:`maxp_torch.Parametrization` under ``rule``, written into
    its ``param_groups`` as ``lr_prefactor * width^-c``; the LP anchored to the preset graph's
    ``c`` and installed as ``param.lp`` so that re-solves in training use it too."""
    reference = StabilityLP(preset_graph(param.graph), "adam", tie_rule="later").solve().c
    lp = StabilityLP(param.graph, "adam", tie_rule=rule, reference_c=reference if rule == "preset" else None)
    c = lp.solve().c
    param.lp = lp
    param.c = np.array([c[name] for name in param.get_layer_names()])
    widths = {name: module.width_dim for name, module in zip(param.names, param.modules, strict=True)}
    for group in param.param_groups:
        if group["layer_name"] in c:
            group["lr"] = param.lr_prefactor * float(widths[group["layer_name"]]) ** -c[group["layer_name"]]
    return c


def _gpt(width: int, vocab: int, ctx: int) -> Any:
    from examples.torch_models import GPT

    model = GPT(d=width, blocks=1, vocab=vocab, ctx=ctx)
    model.blocks[0].v.b = math.inf
    return model


def coord_check(widths: list[int], seeds: list[int], steps: int = 3) -> dict[str, Any]:
    """Update slopes of every op against width under each rule (mean over seeds)."""
    import torch

    from maxp_torch import Parametrization
    from maxp_torch.diagnose import diagnose_axis

    vocab, ctx, batch = 32, 8, 16
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (batch, ctx), generator=generator)
    targets = torch.randint(0, vocab, (batch, ctx), generator=generator)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    out: dict[str, Any] = {}
    for rule in RULES:
        slopes: dict[str, list[float]] = {}
        chosen: dict[str, float] = {}
        for seed in seeds:

            def make_model(
                width: int, seed: int = seed, rule: str = rule, chosen: dict[str, float] = chosen
            ) -> tuple[Any, Any]:
                model = _gpt(width, vocab, ctx)
                param = Parametrization(
                    model,
                    lr_prefactor=1e-2,
                    sample_input=ids,
                    alignment_overrides={"o": O_MEASURED},
                    seed=seed,
                )
                chosen.update(gpt_rates(param, rule))
                return model, param.param_groups

            _, _, stats = diagnose_axis(make_model, lambda w: ids, widths, steps, loss_fn, seed=seed)
            for op, phases in stats.items():
                slopes.setdefault(op, []).append(loglog_slope(widths, phases["update"]))
        mean = {op: float(np.mean(v)) for op, v in slopes.items()}
        out[rule] = {
            "c": chosen,
            "update_slopes": mean,
            "flagged": sorted(op for op, s in mean.items() if not abs(s) <= SLOPE_TOLERANCE),
        }
    return out


def _train_one(
    width: int, steps: int, seed: int, lr: float, interval: int, setting: str, rule: str, data: Any
) -> dict[str, Any]:
    import torch

    from examples.common import CHAR_VOCAB, char_windows
    from maxp_torch import Parametrization

    text, held_x, held_y, ctx, batch = data
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = _gpt(width, CHAR_VOCAB, ctx)
    sample = torch.from_numpy(char_windows(text, rng.integers(0, len(text) - ctx - 1, 32), ctx)[0])
    param = Parametrization(
        model,
        lr_prefactor=lr,
        sample_input=sample[:4],
        alignment_overrides={"o": O_MEASURED} if setting == "override o" else None,
        solve_interval=interval,
        seed=seed,
    )
    start_c = gpt_rates(param, rule)
    optimizer = torch.optim.AdamW(param.param_groups)
    if setting == "measured":
        param.capture_initial(sample)
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(text) - ctx - 1, batch)
        x, y = (torch.from_numpy(a) for a in char_windows(text, starts, ctx))
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, CHAR_VOCAB), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if setting == "measured":
            param.step(x, optimizer)
        losses.append(loss.item())
    with torch.no_grad():
        logits = model(held_x).reshape(-1, CHAR_VOCAB)
        held = float(torch.nn.functional.cross_entropy(logits, held_y.reshape(-1)))
    final_c = dict(zip(param.get_layer_names(), param.c.tolist(), strict=True))
    shown = ("tok", "pos", "blocks.0.v", "blocks.0.o")
    return {
        "setting": setting,
        "lr": lr,
        "rule": rule,
        "seed": seed,
        "train_loss": float(np.mean(losses[-20:])),
        "held_out_loss": held,
        "c_start": {k: start_c[k] for k in shown},
        "c_end": {k: final_c[k] for k in shown},
        "solves": param.solves,
    }


def train(width: int, steps: int, seeds: list[int], lrs: list[float], interval: int) -> list[dict[str, Any]]:
    """Final losses of the character-level GPT under each rule, fixed and measured alignments."""
    import torch

    from examples.common import char_split, char_windows

    text, validation = char_split()
    ctx, batch = 32, 32
    held_starts = np.linspace(0, len(validation) - ctx - 2, 128).astype(np.int64)
    held_x, held_y = (torch.from_numpy(a) for a in char_windows(validation, held_starts, ctx))
    data = (text, held_x, held_y, ctx, batch)
    return [
        _train_one(width, steps, seed, lr, interval, setting, rule, data)
        for setting in ("override o", "measured")
        for lr in lrs
        for rule in RULES
        for seed in seeds
    ]


# --- report ----------------------------------------------------------------------------------


def _fmt(c: dict[str, float], names: tuple[str, ...]) -> str:
    return ", ".join(f"{n} {c[n]:.2f}" for n in names)


def to_markdown(payload: dict[str, Any]) -> str:
    att, summ = payload["attention"], payload["instances"]
    names = ("emb", "q", "k", "v", "o", "out")
    parts = [
        "# Tie rule of the stability LP: `preset` against `later`\n",
        'Where several `c` reach the optimal `sum(c)`, `tie_rule="preset"` returns the one nearest '
        "(weighted L1) the preset's `c` (the graph solved with the `full` alignments), "
        '`tie_rule="later"` the one that gives later layers the larger learning rates. '
        f"Generated by `{payload['command']}`.\n",
        "## LP instances\n",
        "Attention block, `v` zero at initialization, `o` measured at (alpha, omega, u) = (0, 0.5, 1):\n",
        "```\n"
        + format_table(
            [
                ("preset's c (o full)", _fmt(att["preset_c"], names)),
                ("preset rule", _fmt(att["preset"], names)),
                ("later rule", _fmt(att["later"], names)),
            ],
            ("", "c"),
        )
        + "\n```\n",
        f"{summ['instances']} random instances of `tests/core/strategies.py` (chains and DAGs, Adam and "
        f"SGD, some pinned c and feature learning, alignments uniform on a 0.01 grid), each solved "
        f"with its own alignments by an LP built on its preset graph; {summ['feasible']} feasible, "
        f"{summ['with_preset_c']} of them with a feasible preset graph (the distances are over those).\n",
        "```\n"
        + format_table(
            [
                ("rules pick different c", f"{summ['differ']}/{summ['feasible']}"),
                ("max |c_preset - c_later|", f"{summ['max_dc']:.3f}"),
                ("mean |dc| where they differ", f"{summ['mean_dc_when_differ']:.3f}"),
                *(
                    row
                    for rule in RULES
                    for row in (
                        (
                            f"{rule}: c equal to the preset's",
                            f"{summ[f'at_preset_{rule}']}/{summ['with_preset_c']}",
                        ),
                        (f"{rule}: mean max|c - preset c|", f"{summ[f'mean_dist_{rule}']:.3f}"),
                        (f"{rule}: mean sum|c - preset c|", f"{summ[f'mean_l1_{rule}']:.3f}"),
                        (
                            f"{rule}: an embedding's c moved",
                            f"{summ[f'emb_moved_{rule}']}/{summ['with_preset_c']}",
                        ),
                    )
                ),
                ("later farther from preset (L1)", f"{summ['later_farther']}/{summ['with_preset_c']}"),
                ("preset farther from preset (L1)", f"{summ['preset_farther']}/{summ['with_preset_c']}"),
                (
                    "HiGHS vs CLARABEL, preset rule",
                    f"max |dc| {summ['clarabel_max_gap']:.1e} on {summ['clarabel_checked']}",
                ),
            ],
            ("quantity", "value"),
        )
        + "\n```\n",
    ]
    parts.append(
        "Median re-solve time (kept HiGHS models, both stages, alignments drifting as in training):\n\n```\n"
        + format_table(
            [(r["case"], *(f"{r[f'{rule}_ms']:.2f}" for rule in RULES)) for r in payload["resolve_ms"]],
            ("case", *(f"{rule} ms" for rule in RULES)),
        )
        + "\n```\n"
    )
    cc = payload.get("coord_check")
    if cc:
        ops = list(cc[RULES[0]]["update_slopes"])
        parts.append(
            f"## Coordinate check (PyTorch)\n\nGPT, 1 block, vocab 32, context 8, `v` zero at init, `o` "
            f"overridden to (0, 0.5, 1), `lr_prefactor` 1e-2; widths {payload['widths']}, "
            f"{len(payload['seeds'])} seeds, 3 AdamW steps, cross-entropy. Slope of each op's update RMS "
            f"against width (mean over seeds; |slope| > {SLOPE_TOLERANCE} is flagged).\n"
        )
        parts.append(
            "```\n"
            + format_table(
                [(op, *(f"{cc[rule]['update_slopes'][op]:+.2f}" for rule in RULES)) for op in ops]
                + [
                    (
                        "c of v, o",
                        *(f"{cc[r]['c']['blocks.0.v']:.2f}, {cc[r]['c']['blocks.0.o']:.2f}" for r in RULES),
                    ),
                    ("flagged", *(str(len(cc[r]["flagged"])) for r in RULES)),
                ],
                ("op", *(f"slope, {rule}" for rule in RULES)),
            )
            + "\n```\n"
        )
    tr = payload.get("training")
    if tr:
        rows = []
        for setting, lr in dict.fromkeys((r["setting"], r["lr"]) for r in tr):
            for rule in RULES:
                sel = [r for r in tr if r["setting"] == setting and r["lr"] == lr and r["rule"] == rule]
                end = sel[0]["c_end"]
                rows.append(
                    (
                        setting,
                        f"{lr:g}",
                        rule,
                        f"{np.mean([r['train_loss'] for r in sel]):.3f}",
                        f"{np.mean([r['held_out_loss'] for r in sel]):.3f}",
                        " / ".join(f"{r['held_out_loss']:.3f}" for r in sel),
                        ", ".join(f"{k.split('.')[-1]} {end[k]:.2f}" for k in end),
                    )
                )
        lrs = ", ".join(f"{v:g}" for v in payload["train_lr"])
        parts.append(
            f"## Training (PyTorch)\n\nThe same GPT at width {payload['train_width']} (vocab 128, context "
            f"32) on next-character prediction over the standard library's sources, "
            f"{payload['train_steps']} AdamW steps of batch 32, `lr_prefactor` {lrs}; `override o`: rates "
            f"fixed by the override above; `measured`: alignments measured and the LP re-solved every "
            f"{payload['train_interval']} steps. Training loss: mean of the last 20 steps; held-out: 128 "
            f"windows of the held-out tail; mean over seeds {payload['seeds']}; c at the end of the first "
            "seed.\n"
        )
        parts.append(
            "```\n"
            + format_table(
                rows, ("setting", "lr", "rule", "train loss", "held-out", "held-out per seed", "c at end")
            )
            + "\n```\n"
        )
    parts.append(f"Total time {payload['seconds']:.0f} s.\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tie_rule", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer instances, widths and steps")
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clarabel", type=int, default=100, help="instances also solved by CLARABEL")
    parser.add_argument("--no-torch", action="store_true", help="only the LP instances")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[3e-2], help="lr_prefactor of the training runs"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    command = " ".join(["python -m benchmarks.tie_rule", *(argv if argv is not None else sys.argv[1:])])
    count = 40 if args.quick else args.instances
    attention, summary = lp_evidence(count, min(args.clarabel, count))
    payload: dict[str, Any] = {"command": command, "attention": attention, "instances": summary}
    payload["resolve_ms"] = resolve_times(30 if args.quick else 200)
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        widths = [64, 128, 256] if args.quick else [64, 128, 256, 512]
        seeds = [0, 1]
        payload.update(widths=widths, seeds=seeds)
        payload["coord_check"] = coord_check(widths, seeds)
        payload.update(train_width=128 if args.quick else 256, train_steps=40 if args.quick else 200)
        payload.update(train_lr=args.lrs, train_interval=10)
        payload["training"] = train(
            payload["train_width"],
            payload["train_steps"],
            seeds,
            payload["train_lr"],
            payload["train_interval"],
        )
    payload["seconds"] = time.perf_counter() - start
    name = "tie_rule-quick" if args.quick else "tie_rule"
    write_results(args.out, name, payload, to_markdown(payload), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
