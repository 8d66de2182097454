"""Half a run in one process, the other half in another: ``python -m tests.torch.resume_process``.

``first CKPT_DIR``: for every model, build with torch seeded at 0, train 10 steps and save the
model, optimizer and scheduler. ``second CKPT_DIR``: build afresh, load those, train 10 more
and save what the run ended with. :func:`ended_with` is what the test compares.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from maxp_torch import Parametrization, ParametrizedModule

STEPS = 10


class ResidualMLP(nn.Module):
    """Two residual blocks (traced as merge nodes), with dropout drawing from the global generator."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.emb = ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding")
        self.blocks = nn.ModuleList(
            ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden")
            for _ in range(2)
        )
        self.drop = nn.Dropout(0.1)
        self.head = ParametrizedModule(nn.Linear(width, 5), width_dim=width, layer_type="readout")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for block in self.blocks:
            h = h + block(self.drop(torch.relu(h)))
        return self.head(h)


def mlp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def build(name: str):
    """``(model, param, optimizer, scheduler, loss)`` with torch's generator seeded at 0."""
    torch.manual_seed(0)
    dynamic = {"warmup_steps": 1, "solve_interval": 2, "alignment_ema": 0.5, "c_ema": 0.3}
    if name == "residual MLP":
        model = ResidualMLP().train()
        x, y = mlp_batch()
        param = Parametrization(model, sample_input=x, lr_prefactor=1e-2, **dynamic)

        def loss() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)

        sample = x
    else:
        from tests.torch import test_hf

        make, rules = {
            "GPT-2": (test_hf.gpt2, test_hf.GPT2_RULES),
            "Llama": (test_hf.llama, test_hf.LLAMA_RULES),
        }[name]
        model = make().train()
        ids = test_hf.batch()
        param = Parametrization(model, rules=rules, sample_input=ids, lr_prefactor=1e-2, **dynamic)

        def loss() -> torch.Tensor:
            return model(**ids, labels=ids["input_ids"]).loss

        sample = ids
    optimizer = torch.optim.AdamW(param.param_groups)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.2, total_iters=2 * STEPS)
    scheduler = param.lr_scheduler(optimizer, warmup)
    return model, param, optimizer, scheduler, loss, sample


def train(run, steps: int, seed: int) -> None:
    _, _, optimizer, scheduler, loss, _ = run
    torch.manual_seed(seed)  # dropout's draws: a resumed run restores torch's generator
    for _ in range(steps):
        loss().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def ended_with(run) -> dict:
    model, param, optimizer, scheduler, _, _ = run
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "c": param.c.copy(),
        "alignment": param.alignment.copy(),
        "lr": [g["lr"] for g in optimizer.param_groups],
        "counters": (param.step_count, param.solves, param.failures, param.missing, scheduler.last_epoch),
    }


MODELS = ("residual MLP", "GPT-2", "Llama")


def main(phase: str, directory: Path) -> None:
    for i, name in enumerate(MODELS):
        run = build(name)
        model, param, optimizer, scheduler, _, sample = run
        if phase == "first":
            param.capture_initial(sample)
            train(run, STEPS, seed=1)
            state = {
                "model": model.state_dict(),
                "opt": optimizer.state_dict(),
                "sched": scheduler.state_dict(),
            }
            torch.save(state, directory / f"{i}.pt")
        else:
            state = torch.load(directory / f"{i}.pt", weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["opt"])
            scheduler.load_state_dict(state["sched"])
            train(run, STEPS, seed=2)
            torch.save(ended_with(run), directory / f"{i}.end.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
