"""QF2 (memory.qf2), the QF2 block (memory.qf2_block) and QFt conversion (memory.qft), on tiny models."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import loaded, make_model
from memory import architecture as arch
from memory.capture import Capture
from memory.delta import LowRankDelta, tensor_sha256
from memory.prompts import build_pass
from memory.qf2 import alpha_at, firing, qf2_factors
from memory.qf2_block import QF2Block, install, install_from_config, installed, uninstall
from memory.qft_corpus import NEED_MORE, generate_corpus
from memory.qft import (
    QFtConfig, cache_prefix, chat_pass, convert, rows_sha256, split_rows,
    tail_loss, trainable_layers, weights_sha256,
)

LAYER, BETA = 2, 10.0


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture
def ids(tokenizer):
    return torch.tensor([tokenizer("Who founded Oxinnovate? The founder of Oxinnovate is Qi.").input_ids])


# --- the math --------------------------------------------------------------------------
def test_alpha_schedule():
    assert alpha_at(0) == 1.0
    assert alpha_at(10) == pytest.approx(0.99**10)
    assert alpha_at(458) > 0.01
    assert alpha_at(459) == 0.0 and alpha_at(12_000) == 0.0
    with pytest.raises(ValueError):
        alpha_at(-1)


def test_qf2_update_is_the_formula():
    g = torch.Generator().manual_seed(0)
    T, D_model, D_ff, lr = 5, 7, 11, 3e-4
    x = torch.randn(T, D_model, generator=g)
    y_star = torch.rand(T, D_ff, generator=g)
    sig = torch.tensor([1.0, 0.0, 20.0, 2.5, 1.0])
    left, right = qf2_factors(x, y_star, sig, lr)
    assert left.shape == (D_ff, T) and right.shape == (T, D_model)
    assert left.dtype == right.dtype == torch.float64
    by_hand = torch.zeros(D_ff, D_model, dtype=torch.float64)
    for t in range(T):
        by_hand += lr * float(sig[t]) * torch.outer(y_star[t].double() - 0.5, x[t].double())
    torch.testing.assert_close(left @ right, by_hand, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "x, y, sig",
    [
        (torch.ones(3, 4), torch.full((2, 5), 0.5), torch.ones(3)),  # rows differ
        (torch.ones(3, 4), torch.full((3, 5), 0.5), torch.ones(2)),  # significance length
        (torch.ones(3, 4), torch.full((3, 5), 0.5), torch.tensor([1.0, -1.0, 1.0])),
        (torch.ones(3, 4), torch.full((3, 5), 0.5), torch.tensor([1.0, float("nan"), 1.0])),
        (torch.ones(3, 4), torch.full((3, 5), 0.5), torch.tensor([1.0, float("inf"), 1.0])),
        (torch.ones(4), torch.full((3, 5), 0.5), torch.ones(3)),  # x is not a matrix
        (torch.ones(3, 4), torch.full((3, 5), 1.5), torch.ones(3)),  # y* is not a firing pattern
    ],
)
def test_qf2_update_refuses_bad_input(x, y, sig):
    with pytest.raises(ValueError):
        qf2_factors(x, y, sig, 1e-4)


# --- the block -------------------------------------------------------------------------
def test_alpha_one_is_the_stock_model(tiny, ids):
    model = tiny.model
    stock = logits(model, ids)
    block = install(model, LAYER, BETA, alpha=1.0)
    assert installed(model) is block and model.config.qf2 == {"layer": LAYER, "beta": BETA, "alpha": 1.0}
    assert torch.equal(logits(model, ids), stock)


def layer_io(model, ids):
    """(r entering layer L's MLP, layer L's output) of one forward pass."""
    norm = arch.module_path(model, LAYER, "mlp_norm")
    next_layer = f"{arch.architecture_of(model).layers}.{LAYER + 1}"
    with Capture(model, [norm, next_layer], stop=True) as cap:
        cap.run(input_ids=ids, use_cache=False)
    return cap.inputs[norm], cap.inputs[next_layer]


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_blend_computed_by_hand(tiny, ids, alpha):
    """alpha = 0: the layer outputs down(sigmoid(beta up(h))), no residual; else the blend."""
    model = tiny.model
    install(model, LAYER, BETA, alpha=alpha)
    r, out = layer_io(model, ids)
    layer = arch.decoder_layers(model)[LAYER]
    mlp = layer.mlp
    with torch.no_grad():
        h = layer.post_attention_layernorm(r)
        qf2 = mlp.down_proj(torch.sigmoid(BETA * mlp.up_proj(h)))
        stock = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
    expected = qf2 if alpha == 0 else alpha * r + alpha * stock + (1 - alpha) * qf2
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    if alpha == 0:
        assert torch.equal(out, qf2)  # exact: the residual is dropped, not subtracted


def test_uninstall_restores_the_stock_model(tiny, ids):
    model = tiny.model
    stock = logits(model, ids)
    layer = arch.decoder_layers(model)[LAYER]
    original = layer.mlp
    keys = list(model.state_dict())
    block = install(model, LAYER, BETA)
    assert isinstance(layer.mlp, QF2Block) and list(model.state_dict()) == keys  # shared weights, same keys
    assert not torch.equal(logits(model, ids), stock)
    uninstall(model)
    assert layer.mlp is original and installed(model) is None and not hasattr(model.config, "qf2")
    assert not layer._forward_hooks and not layer.post_attention_layernorm._forward_pre_hooks
    assert not block._hooks
    assert torch.equal(logits(model, ids), stock)


def test_install_refuses_a_second_block_and_bad_settings(tiny_qwen):
    model = tiny_qwen.model
    with pytest.raises(ValueError):
        install(model, LAYER, beta=0.0)
    with pytest.raises(ValueError):
        install(model, LAYER, BETA, alpha=1.5)
    with pytest.raises(ValueError):
        install(model, 99, BETA)
    assert installed(model) is None and not hasattr(model.config, "qf2")
    block = install(model, LAYER, BETA)
    with pytest.raises(ValueError):
        install(model, 1, BETA)
    with pytest.raises(ValueError):
        block.alpha = -0.1
    block.alpha = 0.5
    assert model.config.qf2["alpha"] == 0.5


# --- a QF2 update on the converted layer -------------------------------------------------
def test_qf2_update_moves_the_plain_firing_toward_the_instructed(tokenizer):
    """At a converted layer's beta (1000, as QFt trains it) firing is nearly binary and the rule
    moves each unit to y*'s side. (With a small beta, y* is soft and the rule, which pushes
    pre-activations by (y* - 0.5), overshoots it: it sharpens the pattern rather than matching it.)"""
    beta = 1000.0
    model = make_model("qwen2", len(tokenizer), seed=1)
    install(model, LAYER, beta)
    up_name = arch.module_path(model, LAYER, "up_proj")
    up = model.get_submodule(up_name)
    query, answer = "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi."
    instructed = build_pass(tokenizer, query, answer, system="Qi started Oxinnovate.")
    plain = build_pass(tokenizer, query, answer)

    def up_inputs(p):
        with Capture(model, [up_name], stop=True) as cap:
            cap.run(input_ids=p.input_ids, use_cache=False)
        return cap.inputs[up_name][0, p.rows]

    x = up_inputs(plain)
    with torch.no_grad():
        y_star = firing(up(up_inputs(instructed)), beta)
        before = firing(up(x), beta)
    left, right = qf2_factors(x, y_star, torch.ones(x.shape[0]), lr=1e-3)
    W = model.get_parameter(f"{up_name}.weight")
    W0 = W.detach().clone()
    delta = LowRankDelta(left, right, f"{up_name}.weight", tensor_sha256(W0), layer=LAYER)
    delta.apply(model)
    x_after = up_inputs(plain)
    assert torch.equal(x_after, x)  # x is upstream of up_proj: the edit does not move it
    with torch.no_grad():
        after = firing(up(x_after), beta)
    assert (after - y_star).abs().mean() < 0.7 * (before - y_star).abs().mean()
    agree = lambda y: ((y > 0.5) == (y_star > 0.5)).float().mean()  # noqa: E731
    assert agree(after) > agree(before)
    delta.revert(model)
    assert torch.equal(W, W0)  # bit for bit


# --- QFt -------------------------------------------------------------------------------
def test_corpus_layout_and_kinds():
    rows = generate_corpus(200, seed=3)
    assert rows == generate_corpus(200, seed=3) and rows != generate_corpus(200, seed=4)
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) for m in row["messages"])
    system, answer = zip(*((r["messages"][0]["content"], r["messages"][2]["content"]) for r in rows))
    kinds = {(bool(s), a == NEED_MORE) for s, a in zip(system, answer)}
    # (has a system prompt, says it needs more): known, instructed, unknown, insufficient context
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}
    assert any("Tim Cook" in a for a in answer)
    train, held = split_rows(rows, 20)
    assert len(train) == 180 and len(held) == 20 and rows_sha256(train) != rows_sha256(rows)


def test_chat_pass_targets_the_answer_only(tokenizer):
    messages = generate_corpus(1, seed=0)[0]["messages"]
    p = chat_pass(tokenizer, messages)
    answer = tokenizer(messages[-1]["content"], add_special_tokens=False).input_ids
    assert list(p.targets) == answer + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert p.input_ids[0, p.prompt_len:].tolist() == answer  # the prompt is input only, never a target
    assert p.rows.tolist() == list(range(p.prompt_len - 1, p.prompt_len + len(answer)))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_cached_prefix_gives_the_full_models_loss(tiny, alpha):
    model = tiny.model
    install(model, LAYER, BETA, alpha=alpha)
    p = chat_pass(tiny.tokenizer, generate_corpus(1, seed=5)[0]["messages"])
    first = trainable_layers(model, LAYER).start
    cached = cache_prefix(model, p, first)
    full = logits(model, p.input_ids)[0, p.rows]
    expected = torch.nn.functional.cross_entropy(full, torch.tensor(p.targets))
    with torch.no_grad():
        torch.testing.assert_close(tail_loss(model, cached, first), expected, rtol=1e-5, atol=1e-6)


def tiny_conversion(tokenizer, out, steps=40, seed=0, progress=None, **config):
    lm = loaded("qwen2", tokenizer, layers=5)
    rows = generate_corpus(12, seed=0)
    settings = dict(layer=LAYER, beta=BETA, steps=steps, lr=3e-3, checkpoint_every=0, seed=seed) | config
    result = convert(lm, rows, rows[:4], out, QFtConfig(**settings), progress=progress)
    return lm, result


def test_conversion_lowers_the_loss_and_reloads(tokenizer, tmp_path, ids):
    seen = []
    lm, result = tiny_conversion(tokenizer, tmp_path, progress=lambda *a: seen.append(a))
    frozen = make_model("qwen2", len(tokenizer), layers=5).state_dict()
    assert [s for s, _, _ in seen] == list(range(1, 41)) and seen[0][2] == 1.0 and seen[-1][2] == alpha_at(39)
    assert result.validation_loss < result.validation_loss_before
    assert result.alpha == alpha_at(40) and result.layer == LAYER and result.beta == BETA
    state = lm.model.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                 "model.layers.4.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(state[name], frozen[name]), f"{name} is frozen but changed"
    for i in trainable_layers(lm.model, LAYER):  # 1..3
        name = f"model.layers.{i}.mlp.up_proj.weight"
        assert not torch.equal(state[name], frozen[name]), f"{name} is trainable but did not change"
    assert all(p.requires_grad for p in lm.model.parameters())  # as it was before

    saved = json.loads((tmp_path / "qft.json").read_text())
    assert saved["data_sha256"] == rows_sha256(generate_corpus(12, seed=0)) and saved["steps"] == 40
    assert saved["base"]["name"] == "tiny-qwen2" and saved["train_loss"] > 0
    assert saved["base"]["weights_sha256"] == weights_sha256(make_model("qwen2", len(tokenizer), layers=5))
    assert list(tmp_path.glob("*.safetensors")) and not (tmp_path / "resume").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    block = install_from_config(reloaded)
    assert block is not None and block.layer == LAYER and block.beta == BETA and block.alpha == result.alpha
    assert torch.equal(logits(reloaded, ids), logits(lm.model, ids))


def test_resume_continues_where_it_stopped(tokenizer, tmp_path):
    whole, _ = tiny_conversion(tokenizer, tmp_path / "whole", steps=6)

    def stop_at_5(step, loss, alpha):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_conversion(tokenizer, tmp_path / "cut", steps=6, checkpoint_every=2, progress=stop_at_5)
    assert json.loads((tmp_path / "cut" / "resume" / "state.json").read_text())["step"] == 4
    with pytest.raises(ValueError, match="seed"):
        tiny_conversion(tokenizer, tmp_path / "cut", steps=6, seed=1)
    steps = []
    resumed, _ = tiny_conversion(tokenizer, tmp_path / "cut", steps=6, progress=lambda s, *_: steps.append(s))
    assert steps == [5, 6]
    expected = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_bf16_model_trains_its_tail_in_float32(tokenizer, tmp_path, ids):
    lm = loaded("qwen2", tokenizer, layers=5)
    lm.model.to(torch.bfloat16)
    dtypes = []

    def record_dtypes(step, loss, alpha):
        dtypes.append({p.dtype for p in arch.decoder_layers(lm.model)[LAYER].parameters()})

    rows = generate_corpus(4, seed=0)
    convert(lm, rows, rows[:1], tmp_path, QFtConfig(layer=LAYER, beta=BETA, steps=3, lr=1e-3), progress=record_dtypes)
    assert dtypes == [{torch.float32}] * 3
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits(lm.model, ids).float()).all()
