"""maxP in the trainers people run: the Hugging Face Trainer and PyTorch Lightning, a few CPU steps.

Each run checks, at every step, that every layer's rate is the trainer's own warm-up/decay
factor (torch's, for a plain one-group optimizer at lr 1) times maxP's rate for that layer
(``lr_prefactor * fan_in^-c`` with the ``c`` of that step), while the LP re-solves.
"""

import numpy as np
import pytest
import torch
from torch import nn

from tests.torch.test_schedules import dynamic_param, expected_rates, mlp, solves_in

STEPS = 10
BATCH = 8


def data(n: int = STEPS * BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def warmup_cosine_factors(make) -> list[float]:
    """The factor after each of ``STEPS`` steps, for a plain optimizer at lr 1."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make(optimizer)
    factors = []
    for _ in range(STEPS):
        optimizer.step()
        scheduler.step()
        factors.append(optimizer.param_groups[0]["lr"])
    return factors


def check_rates(seen: list[list[float]], wanted: list[list[float]], exponents: list[list[float]]) -> None:
    assert len(seen) == STEPS
    np.testing.assert_allclose(seen, wanted, rtol=1e-12)
    assert len({tuple(c) for c in exponents}) > 1, "the re-solves never moved c: nothing was tested"


def test_hugging_face_trainer_with_maxp_as_its_scheduler(tmp_path) -> None:
    """A tiny GPT-2 (tied embedding and readout, traced attention) under the Trainer's own
    warm-up and cosine decay, given as ``optimizers=(optimizer, scheduler)``."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from maxp_torch import Parametrization
    from tests.torch.test_hf import GPT2_RULES, VOCAB, batch, gpt2

    def make_schedule(optimizer):
        return transformers.get_cosine_schedule_with_warmup(optimizer, 3, STEPS)

    torch.manual_seed(0)
    model = gpt2().train()
    sample = batch()
    param = Parametrization(
        model, rules=GPT2_RULES, sample_input=sample, lr_prefactor=1e-2, warmup_steps=2, solve_interval=3
    )
    optimizer = torch.optim.AdamW(param.param_groups)
    scheduler = param.lr_scheduler(optimizer, make_schedule(optimizer))
    param.capture_initial(sample)
    factors = warmup_cosine_factors(make_schedule)
    layers = len(param.groups)
    seen, wanted, exponents = [], [], []

    class Record(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            groups = optimizer.param_groups
            seen.append([g["lr"] for g in groups])
            wanted.append(expected_rates(optimizer, factors[len(wanted)], prefactor=1e-2))
            exponents.append([g["c"] for g in groups[:layers]])

    ids = torch.randint(
        0, VOCAB, (STEPS * 2, sample["input_ids"].shape[1]), generator=torch.Generator().manual_seed(1)
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": row, "labels": row} for row in ids],
        optimizers=(optimizer, scheduler),
        callbacks=[Record()],
    )
    trainer.train()
    check_rates(seen, wanted, exponents)
    assert param.solves == solves_in(param) >= 2
    assert any("tied" in g for g in optimizer.param_groups)
    # The Trainer logs the rate the first layer group had in the step it reports.
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert len(logged) == STEPS
    np.testing.assert_allclose(logged[1:], [rates[0] for rates in seen[:-1]], rtol=1e-12)


def test_lightning_with_maxp_as_its_step_scheduler() -> None:
    pl = pytest.importorskip("pytorch_lightning")

    def make_schedule(optimizer):
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3),
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS - 3),
            ],
            milestones=[3],
        )

    factors = warmup_cosine_factors(make_schedule)
    x, y = data()
    seen, wanted, exponents = [], [], []

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            self.maxp = dynamic_param(self.net)

        def training_step(self, batch, batch_idx):
            inputs, labels = batch
            return nn.functional.cross_entropy(self.net(inputs), labels)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.maxp.param_groups)
            scheduler = self.maxp.lr_scheduler(optimizer, make_schedule(optimizer))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def on_train_start(self) -> None:
            self.maxp.capture_initial(x[:16])

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            optimizer = self.trainer.optimizers[0]
            seen.append([g["lr"] for g in optimizer.param_groups])
            wanted.append(expected_rates(optimizer, factors[len(wanted)]))
            exponents.append([g["c"] for g in optimizer.param_groups[:3]])

    module = Module()
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    trainer.fit(module, loader)
    check_rates(seen, wanted, exponents)
    assert module.maxp.solves == solves_in(module.maxp) >= 2


def test_accelerates_optimizer_wrapper_is_seen_through() -> None:
    accelerate = pytest.importorskip("accelerate")
    from maxp_core import MaxPError
    from maxp_torch import optimizer_kind

    accelerator = accelerate.Accelerator(cpu=True)
    model = mlp()
    param = dynamic_param(model, optimizer_type="sgd")
    wrapped = accelerator.prepare(torch.optim.SGD(param.param_groups))
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    assert optimizer_kind(wrapped) == "sgd"
    param.capture_initial(data()[0][:16])
    param.step(None, wrapped)
    assert [g["lr"] for g in wrapped.param_groups[:3]] == param.get_last_lr()
    adam_param = dynamic_param(mlp())
    with pytest.raises(MaxPError, match=r"optimizer is SGD \(sgd-like\)"):
        adam_param.step(None, accelerator.prepare(torch.optim.SGD(adam_param.param_groups)))
