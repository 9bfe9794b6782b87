"""The closed-form readout QFt writes into down_proj when the stock MLP has faded out (memory.qft_readout)."""

import json

import pytest
import torch

from conftest import loaded
from memory import architecture as arch
from memory.qf2 import alpha_at, faded_step
from memory.qf2_block import install
from memory.qft import QFtConfig, cache_prefix, chat_pass, convert, trainable_layers
from memory.qft_corpus import generate_corpus
from memory.qft_readout import Normal, fit_readout, readout_solve

LAYER, BETA = 2, 10.0


def test_faded_step_is_the_first_step_with_alpha_zero():
    step = faded_step()
    assert step == 459 and alpha_at(step) == 0.0 and alpha_at(step - 1) > 0.0


def test_solve_recovers_an_exact_readout_and_reports_its_error():
    torch.manual_seed(0)
    codes = (torch.rand(600, 40) > 0.5).float()
    truth = torch.randn(8, 40, dtype=torch.float64)
    normal = Normal(40, 8)
    for chunk in codes.split(128):  # accumulating in chunks is the same as all at once
        normal.add(chunk, chunk.double() @ truth.T)
    fit = readout_solve(normal, ridge=1e-10)
    torch.testing.assert_close(fit.weight, truth, rtol=0, atol=1e-6)
    assert fit.tokens == 600 and fit.relative_error < 1e-6

    noisy = Normal(40, 8)
    targets = codes.double() @ truth.T
    noise = 0.1 * targets.norm() / targets.numel() ** 0.5 * torch.randn_like(targets)
    noisy.add(codes, targets + noise)
    fit = readout_solve(noisy, ridge=1e-10)
    direct = ((codes.double() @ fit.weight.T - targets - noise).norm() / (targets + noise).norm()).item()
    assert fit.relative_error == pytest.approx(direct, rel=1e-6) and 0.01 < fit.relative_error < 0.2

    with pytest.raises(ValueError, match="no tokens"):
        readout_solve(Normal(40, 8))


def test_cache_prefix_keeps_the_stock_output_of_a_layer(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    p = chat_pass(tokenizer, generate_corpus(1, seed=1)[0]["messages"])
    with torch.no_grad():
        hidden = model(input_ids=p.input_ids, output_hidden_states=True, use_cache=False).hidden_states
    first = trainable_layers(model, LAYER).start
    cached = cache_prefix(model, p, first, output_of=LAYER)
    torch.testing.assert_close(cached.stock_output, hidden[LAYER + 1][0].float())
    last = arch.num_layers(model) - 1
    outputs = []
    handle = arch.decoder_layers(model)[last].register_forward_hook(lambda m, a, o: outputs.append(o))
    with torch.no_grad():
        model(input_ids=p.input_ids, use_cache=False)
    handle.remove()
    at_last = cache_prefix(model, p, first, output_of=last)
    expected = outputs[0] if isinstance(outputs[0], torch.Tensor) else outputs[0][0]
    torch.testing.assert_close(at_last.stock_output, expected[0].float())
    assert cache_prefix(model, p, first).stock_output is None


def test_fitted_readout_reproduces_the_stock_layer_better_than_the_stock_down_proj(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    first = trainable_layers(model, LAYER).start
    examples = [cache_prefix(model, chat_pass(tokenizer, row["messages"]), first, output_of=LAYER)
                for row in generate_corpus(30, seed=2)]
    install(model, LAYER, BETA, alpha=0.0)
    down = arch.decoder_layers(model)[LAYER].mlp.down_proj

    def error() -> float:
        layers = arch.decoder_layers(model)
        total = norm = 0.0
        with torch.no_grad():
            for e in examples:
                h = e.hidden
                for layer, kwargs in zip(layers[first:LAYER + 1], e.layer_kwargs):
                    h = layer(h, **kwargs)
                    h = h if isinstance(h, torch.Tensor) else h[0]
                total += float((h[0] - e.stock_output).pow(2).sum())
                norm += float(e.stock_output.pow(2).sum())
        return (total / norm) ** 0.5

    before = error()
    fit = fit_readout(model, examples, first, LAYER, BETA, ridge=1e-4)
    with torch.no_grad():
        down.weight.copy_(fit.weight.float())
    after = error()
    assert after == pytest.approx(fit.relative_error, rel=1e-3)
    assert after < 0.5 * before


def tiny_conversion(tokenizer, out, steps, progress=None, **config):
    lm = loaded("qwen2", tokenizer, layers=5)
    rows = generate_corpus(12, seed=0)
    settings = dict(layer=LAYER, beta=BETA, steps=steps, lr=3e-3, checkpoint_every=0, readout_rows=6) | config
    return lm, convert(lm, rows, rows[:2], out, QFtConfig(**settings), progress=progress)


def test_conversion_refits_the_readout_once_the_fade_is_over_and_resumes_across_it(tokenizer, tmp_path):
    steps = faded_step() + 3
    whole, result = tiny_conversion(tokenizer, tmp_path / "whole", steps)
    assert result.readout_tokens > 0 and 0 <= result.readout_error < 1 and result.alpha == 0.0
    answers = result.validation_answers
    assert len(answers) == 2 and all({"answer", "answer_before", "expected", "messages"} <= set(a) for a in answers)
    assert json.loads((tmp_path / "whole" / "qft.json").read_text())["readout_error"] == result.readout_error

    def stop_at(step, loss, alpha):
        if step == 400:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_conversion(tokenizer, tmp_path / "cut", steps, progress=stop_at, checkpoint_every=200)
    resumed, again = tiny_conversion(tokenizer, tmp_path / "cut", steps)
    assert again.readout_error == result.readout_error
    expected = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name

    _, paper = tiny_conversion(tokenizer, tmp_path / "paper", steps, readout_rows=0)
    assert paper.readout_error is None and paper.readout_tokens == 0
