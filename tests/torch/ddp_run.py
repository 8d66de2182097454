"""Train with Parametrization under DistributedDataParallel (gloo, CPU) and print the rates.

``python -m tests.torch.ddp_run WORLD_SIZE OUT_DIR`` writes ``rank<r>.json`` per rank;
with 1 it runs a single process on the whole batch.
"""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maxp_torch import Parametrization
from tests.torch.test_parametrization import MLP, data

STEPS = 6


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    if world == 1:
        train(rank, world, out_dir)
        return
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    train(rank, world, out_dir)
    # The model and its DDP reducer are freed when train returns; the barrier makes every rank wait
    # for the others before gloo closes its connections, so no rank tears the group down while a
    # peer is still using it (seen once as a SIGABRT on a loaded 2-core machine).
    dist.barrier()
    dist.destroy_process_group()


def train(rank: int, world: int, out_dir: str) -> None:
    torch.manual_seed(0)
    model: nn.Module = MLP(width=32, depth=4, dtype=torch.float64)
    if world > 1:
        model = DistributedDataParallel(model)
    # Ranks seeded apart (as device-specific seeding does): maxP's initial draw is rank 0's on all.
    torch.manual_seed(100 + rank)
    param = Parametrization(model, lr_prefactor=0.05, warmup_steps=1, solve_interval=2)
    initial = float(sum(p.double().abs().sum() for p in model.parameters()))
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    x, y = data(n=32, dtype=torch.float64)
    share = len(x) // world
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    param.capture_initial(x)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        param.step(x, optimizer)
    result = {
        "rank": rank,
        "lr": param.get_last_lr(),
        "c": param.c.tolist(),
        "solves": param.solves,
        "initial": initial,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def main() -> None:
    world, out_dir = int(sys.argv[1]), sys.argv[2]
    if world == 1:
        run(0, 1, "", out_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(run, args=(world, os.path.join(tmp, "init"), out_dir), nprocs=world, join=True)


if __name__ == "__main__":
    main()
