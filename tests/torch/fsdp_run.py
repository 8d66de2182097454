"""Train a rules-parametrized MLP sharded with FSDP2 (``fully_shard``, gloo, CPU) and write its rates.

``python -m tests.torch.fsdp_run WORLD_SIZE OUT_DIR`` writes ``rank<r>.json`` per rank. Each
rank first builds a Parametrization and then shards (the refused order, whose error is
recorded), then shards a fresh model and builds the Parametrization (the supported order)
and trains it. :func:`train` with a world of 1 is the unsharded reference.
"""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from examples.torch_models import GPT
from maxp_core import MaxPError
from maxp_torch import Parametrization, Rule
from tests.torch.test_parametrization import data

STEPS = 6
RULES = [Rule("0", "embedding"), Rule("2|4", "hidden"), Rule("6", "readout")]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    sizes = [16, 24, 24, 24, 10]  # 24 rows split unevenly on 2 ranks would be 12/12; 10 is 5/5
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def shard(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module)
    fully_shard(model)


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {"refused": refusal(rank, world), **train(rank, world), **uneven_sequences(rank)}
    finally:
        dist.barrier()
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def batch(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data(n=32, dtype=torch.float64)
    share = len(x) // world
    return x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]


def uneven_sequences(rank: int) -> dict:
    """A sharded GPT whose ranks hold 4 and 1 sequences: rank 0's sample shrinks, rank 1's cannot.

    Every forward pass gathers weights with all ranks, so both must run as many at capture.
    """
    torch.manual_seed(0)
    vocab, ctx = 20, 8
    model = GPT(d=16, blocks=1, vocab=vocab, ctx=ctx)
    ids = torch.randint(0, vocab, (4 if rank == 0 else 1, ctx))
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    param = Parametrization(model, lr_prefactor=0.01, solve_interval=1, sample_size=ctx)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(ids)
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(ids)
        nn.functional.cross_entropy(logits.reshape(-1, vocab), ids.reshape(-1)).backward()
        optimizer.step()
        param.step(ids, optimizer)
    return {
        "gpt_sample": list(param._sample.shape),
        "gpt_solves": param.solves,
        "gpt_lr": param.get_last_lr(),
    }


def refusal(rank: int, world: int) -> str | None:
    """The error maxP raises when the model is sharded after its Parametrization."""
    model = mlp()
    param = Parametrization(model, rules=RULES)
    shard(model)
    try:
        param.capture_initial(batch(rank, world)[0])
    except MaxPError as err:
        return str(err)
    return None


def train(rank: int, world: int) -> dict:
    model = mlp()
    x, y = batch(rank, world)
    if world > 1:
        shard(model)
    param = Parametrization(model, rules=RULES, lr_prefactor=0.05, warmup_steps=1, solve_interval=2)
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    param.capture_initial(x)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        param.step(x, optimizer)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    full = [w.full_tensor() if hasattr(w, "full_tensor") else w for w in weights]
    return {
        "rank": rank,
        "lr": param.get_last_lr(),
        "solves": param.solves,
        "alignment": param.get_alignment(),
        "weight_norms": [float(w.detach().norm()) for w in full],
        "sharded": type(weights[0]).__name__,
    }


def main() -> None:
    world, out_dir = int(sys.argv[1]), sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(run, args=(world, os.path.join(tmp, "init"), out_dir), nprocs=world, join=True)


if __name__ == "__main__":
    main()
