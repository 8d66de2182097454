"""Hugging Face transformers models, built from tiny configs (nothing downloaded), through rules only."""

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from maxp_torch import Parametrization, Rule
from tests.torch.resume import assert_same_run, straight_and_resumed

transformers = pytest.importorskip("transformers")

VOCAB, CTX = 64, 16

GPT2_RULES = [
    Rule(r"transformer\.wte", "embedding"),
    Rule(r"transformer\.wpe", "embedding"),
    Rule(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)", "hidden"),
    Rule("lm_head", "readout"),
    Rule(r"transformer\.h\.\d+\.attn", "attention"),
]

LLAMA_RULES = [
    Rule(r"model\.embed_tokens", "embedding"),
    Rule(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)", "hidden"),
    Rule("lm_head", "readout"),
    Rule(r"model\.layers\.\d+\.self_attn", "attention"),
]


def gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=CTX, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=CTX,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (4, CTX), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class AttentionCalls(TorchFunctionMode):
    """Records the scale and head dimension of every fused attention call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            self.calls.append((kwargs.get("scale"), args[0].shape[-1]))
        return func(*args, **kwargs)


def train(model: torch.nn.Module, param: Parametrization, steps: int) -> list[list[float]]:
    x = batch()
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)
    rates = [param.get_last_lr()]
    model.train()
    for _ in range(steps):
        model(**x, labels=x["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        param.step(x, optimizer)
        rates.append([g["lr"] for g in optimizer.param_groups[: len(param.groups)]])
    return rates


@pytest.mark.parametrize("build, rules", [(gpt2, GPT2_RULES), (llama, LLAMA_RULES)], ids=["gpt2", "llama"])
def test_stock_model_end_to_end(build, rules, tmp_path) -> None:
    model = build()
    stock_keys = list(model.state_dict())
    param = Parametrization(model, rules=rules, strict=True, sample_input=batch(), lr_prefactor=1e-2)
    # Every weight of two or more axes has a role (strict), and the classes and keys are the stock ones.
    assert list(model.state_dict()) == stock_keys
    weights = {name for name, p in model.named_parameters() if p.ndim >= 2}
    covered = {n for n, p in model.named_parameters() for m in param.modules if p is m.weight}
    assert covered == weights
    # The fused attention of every block is a scores contraction at muP's 1/d.
    scores = [n for n in param.graph.nodes if n.name.endswith(".scores")]
    assert len(scores) == 2 and all(n.contraction and n.a == pytest.approx(1.0) for n in scores)
    with AttentionCalls() as spy, torch.no_grad():
        model(**batch())
    assert spy.calls and all(scale == pytest.approx(1 / head) for scale, head in spy.calls)
    # The static LP: muP's Adam exponents at full alignment (hand derivation: hidden 1, others 1/2).
    hidden = [j for j, k in enumerate(param.weighted) if param.modules[k].layer_type == "hidden"]
    assert param.c[hidden] == pytest.approx(1.0) and np.delete(param.c, hidden) == pytest.approx(0.5)
    rates = train(model, param, 20)
    assert np.isfinite(rates).all() and param.solves == 20 and param.failures == 0
    moved = np.abs(np.array(rates[-1]) / np.array(rates[0]) - 1) > 1e-3
    assert moved.sum() >= len(moved) - 1  # every rate moved (at most one may sit where it started)
    # save_pretrained + from_pretrained into the stock class restores every tensor.
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(theirs) == stock_keys
    for key in stock_keys:
        torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0, msg=key)


def test_gpt2_conv1d_and_tied_readout() -> None:
    model = gpt2()
    param = Parametrization(model, rules=GPT2_RULES, strict=True, sample_input=batch(), lr_prefactor=1e-2)
    c_fc = model.transformer.h[0].mlp.c_fc
    layer = next(m for m in param.modules if m.inner is c_fc)
    assert (layer.kind.name, layer.width_dim) == ("transposed", 32)  # (in, out) = (32, 128): width 32
    # Its input rows times its (out, in) matrix are the module's own output.
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(
        layer.kind.rows(c_fc, x) @ layer.kind.matrix(c_fc.weight).T + c_fc.bias, c_fc(x).reshape(-1, 128)
    )
    # The tied table: one group, listed once, at the smaller of the two uses' rates.
    tied = next(g for g in param.param_groups if "tied" in g)
    assert tied["tied"] == ["transformer.wte", "lm_head"] and tied["params"] == [model.lm_head.weight]
    logged = param.metrics()
    wanted = [1e-2 * logged[f"maxp/lr_factor/{n}"] for n in tied["tied"]]
    assert tied["lr"] == pytest.approx(min(wanted))
    assert sum(len(g["params"]) for g in param.param_groups) == len(list(model.parameters()))
    assert math.isfinite(param.graph.node("lm_head").a)


@pytest.mark.parametrize("build, rules", [(gpt2, GPT2_RULES), (llama, LLAMA_RULES)], ids=["gpt2", "llama"])
def test_resume_with_a_traced_graph_is_bit_exact(build, rules) -> None:
    """A checkpoint of a traced model (scores, merges, a tied readout) resumes to the last bit.

    Dropout draws from torch's global generator: like any resumed run, the test restores it
    (here by seeding each segment), as the README says.
    """
    x = batch()

    def make():
        torch.manual_seed(0)
        model = build().train()
        param = Parametrization(
            model,
            rules=rules,
            sample_input=x,
            lr_prefactor=1e-2,
            warmup_steps=1,
            solve_interval=2,
            alignment_ema=0.5,
            c_ema=0.3,
        )
        return model, param, torch.optim.AdamW(param.param_groups)

    def run(model, param, optimizer, steps, seed):
        torch.manual_seed(seed)
        for _ in range(steps):
            model(**x, labels=x["input_ids"]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            param.step(x, optimizer)

    straight, resumed = straight_and_resumed(make, run, x)
    assert len(resumed[1].graph.nodes) > len(resumed[1].names)  # merge and score nodes hold alignments
    assert_same_run(straight, resumed)
    assert straight[1].solves == resumed[1].solves >= 9


def test_transposed_weights_keep_one_copy_of_their_initial_state() -> None:
    """GPT-2's Conv1D weights are read transposed: their initial weights stay in their own
    layout (as checkpoints hold them), the initial inputs of equally shaped layers in one stack."""
    from tests.torch.test_measurement import held_bytes

    model = gpt2()
    param = Parametrization(model, rules=GPT2_RULES, sample_input=batch(), lr_prefactor=1e-2)
    param.capture_initial(batch())
    param._measure(batch())  # stacks what the measurement reads
    measurement = param._measurement
    held, own = held_bytes(measurement)
    assert held == own
    stacked = [chunk for chunk, entry in measurement._initial_stacks.items() if len(chunk) > 1]
    assert stacked and all(measurement._initial_stacks[chunk][1] is None for chunk in stacked)
    for chunk in stacked:
        for k in chunk:
            weight = measurement.layers.modules[k].weight
            assert measurement.w0[k].shape == weight.shape
