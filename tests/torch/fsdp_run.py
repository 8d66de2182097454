"""Train a rules-parametrized MLP sharded with FSDP2 (``fully_shard``, gloo, CPU) and write its rates.

``python -m tests.torch.fsdp_run WORLD_SIZE OUT_DIR ORDER`` writes ``rank<r>.json`` per rank.
ORDER ``shard-first`` shards, then builds the Parametrization (the supported order);
``parametrize-first`` builds it first and records the error maxP raises. With a world of
1 nothing is sharded: one process on the whole batch.
"""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

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


def run(rank: int, world: int, init_file: str, out_dir: str, order: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(rank, world, order)
    finally:
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def train(rank: int, world: int, order: str) -> dict:
    model = mlp()
    x, y = data(n=32, dtype=torch.float64)
    share = len(x) // world
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    if order == "parametrize-first":
        param = Parametrization(model, rules=RULES, lr_prefactor=0.05, warmup_steps=1, solve_interval=2)
        if world > 1:
            shard(model)
        try:
            param.capture_initial(x)
        except MaxPError as err:
            return {"rank": rank, "error": str(err)}
        return {"rank": rank, "error": None}
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
    world, out_dir, order = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if world == 1:
        run(0, 1, "", out_dir, order)
        return
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(run, args=(world, os.path.join(tmp, "init"), out_dir, order), nprocs=world, join=True)


if __name__ == "__main__":
    main()
