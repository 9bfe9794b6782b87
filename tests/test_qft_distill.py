"""QFt's distillation term (memory.qft_distill, memory.qft): KL to the stock model on every token."""

import json

import pytest
import torch

from conftest import loaded
from memory.qf2 import firing
from memory.qf2_block import install
from memory.qft import QFtConfig, cache_prefix, chat_agreement, chat_pass, convert, tail_loss, trainable_layers
from memory.qft_corpus import generate_corpus
from memory.qft_distill import HELD_OUT_CHATS, check_rows, chat_rows, kl_to_teacher, top1_agreement
from memory.generic_chats import CHATS

LAYER, BETA = 2, 10.0


def test_kl_to_teacher_is_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 11)
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(kl_to_teacher(student, teacher), expected)
    assert float(kl_to_teacher(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    assert top1_agreement(teacher, teacher) == 1.0
    assert top1_agreement(-teacher, teacher) == 0.0


def test_chat_rows_hold_out_the_last_exchanges():
    train, held = chat_rows(held_out=False), chat_rows(held_out=True)
    assert len(held) == HELD_OUT_CHATS and len(train) + len(held) == len(CHATS)
    assert held[-1]["messages"][0]["content"] == CHATS[-1][0]
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held}
    assert all(r["messages"][-1] == {"role": "assistant", "content": ""} for r in check_rows())


def test_cache_prefix_keeps_the_stock_final_norm_output(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    p = chat_pass(tokenizer, chat_rows(held_out=True)[0]["messages"])
    with torch.no_grad():
        final = model(input_ids=p.input_ids, output_hidden_states=True, use_cache=False).hidden_states[-1]
    first = trainable_layers(model, LAYER).start
    cached = cache_prefix(model, p, first, output_of=LAYER, teacher=True)
    torch.testing.assert_close(cached.teacher, final[0])
    plain = cache_prefix(model, p, first)
    assert plain.teacher is None
    torch.testing.assert_close(cached.hidden, plain.hidden)


def test_the_stock_model_is_its_own_teacher(tiny):
    """On the stock weights the KL term is zero: the loss is the answer loss, agreement perfect."""
    model, tokenizer = tiny.model, tiny.tokenizer
    first = trainable_layers(model, LAYER).start
    example = cache_prefix(model, chat_pass(tokenizer, generate_corpus(1, seed=3)[0]["messages"]), first, teacher=True)
    with torch.no_grad():
        torch.testing.assert_close(tail_loss(model, example, first, distill=5.0), tail_loss(model, example, first))
        kl, top1 = chat_agreement(model, [example], first)
    assert kl == pytest.approx(0.0, abs=1e-6) and top1 == 1.0
    install(model, LAYER, BETA, alpha=0.0)  # the converted layer, untrained: the KL term is felt
    with torch.no_grad():
        assert tail_loss(model, example, first, distill=1.0) > tail_loss(model, example, first) + 1e-4
        kl, _ = chat_agreement(model, [example], first)
    assert kl > 1e-4


def tiny_conversion(tokenizer, out, **config):
    lm = loaded("qwen2", tokenizer, layers=5)
    rows = generate_corpus(12, seed=0)
    settings = dict(layer=LAYER, beta=BETA, steps=30, lr=3e-3, checkpoint_every=0, readout_rows=0) | config
    return convert(lm, rows, rows[:4], out, QFtConfig(**settings))


def test_distillation_keeps_the_converted_model_closer_to_the_stock_one(tokenizer, tmp_path):
    plain = tiny_conversion(tokenizer, tmp_path / "plain", distill=0.0, eval_every=10)
    distilled = tiny_conversion(tokenizer, tmp_path / "distilled", distill=1.0, eval_every=10)
    assert [p["step"] for p in distilled.chat_curve] == [10, 20, 30]
    assert distilled.chat_kl == distilled.chat_curve[-1]["kl"] and plain.distill == 0.0
    assert distilled.chat_kl < plain.chat_kl and distilled.chat_top1 >= plain.chat_top1
    saved = json.loads((tmp_path / "distilled" / "qft.json").read_text())
    assert saved["distill"] == 1.0 and len(saved["chat_answers"]) == len(check_rows())
    assert all(set(a) == {"messages", "answer_before", "answer"} for a in saved["chat_answers"])


def test_resume_refuses_another_distillation_weight(tokenizer, tmp_path):
    def stop_at_3(step, loss, alpha):
        if step == 3:
            raise KeyboardInterrupt

    lm = loaded("qwen2", tokenizer, layers=5)
    rows = generate_corpus(6, seed=0)
    config = QFtConfig(layer=LAYER, beta=BETA, steps=4, lr=1e-3, checkpoint_every=2, distill=1.0)
    with pytest.raises(KeyboardInterrupt):
        convert(lm, rows, rows[:1], tmp_path, config, progress=stop_at_3)
    with pytest.raises(ValueError, match="distill"):
        convert(loaded("qwen2", tokenizer, layers=5), rows, rows[:1], tmp_path,
                QFtConfig(layer=LAYER, beta=BETA, steps=4, lr=1e-3, checkpoint_every=2, distill=0.5))


def test_the_surrogate_gradient_leaves_the_firing_as_it_is():
    z = torch.linspace(-0.05, 0.05, 41, dtype=torch.float64, requires_grad=True)
    sharp = firing(z, 1000.0)
    surrogate = firing(z, 1000.0, surrogate_beta=10.0)
    assert torch.equal(surrogate, sharp)
    (grad,) = torch.autograd.grad(surrogate.sum(), z)
    soft = torch.sigmoid(10.0 * z.detach())
    torch.testing.assert_close(grad, 10.0 * soft * (1 - soft))
    assert firing(z.detach(), 1000.0, surrogate_beta=10.0).equal(sharp.detach())  # no graph: plain firing


def test_the_surrogate_lets_the_converted_layers_up_proj_learn(tiny_qwen):
    model = tiny_qwen.model
    block = install(model, LAYER, 1000.0, alpha=0.0)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    up = block.get_submodule("up_proj").weight
    with torch.no_grad():
        up.mul_(100.0)  # pre-activations of order 1, as in a real model: at beta 1000 the firing is a step

    def up_grad(surrogate):
        block.surrogate_beta = surrogate
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, use_cache=False).logits.square().mean().backward()
        return up.grad.norm().item()

    assert up_grad(10.0) > 100 * up_grad(None)

