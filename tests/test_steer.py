"""Steering (memory.steer, --steer): the least change that puts a row's answer first by a margin,
read off the head in closed form, checked against the norm and head it stands for."""

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from memory import architecture as arch
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.qf import qf_residual
from memory.row_gain import Head
from memory.steer import steering


def _head(N: int = 24, V: int = 60, seed: int = 0) -> tuple[Head, Qwen2RMSNorm, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    norm = Qwen2RMSNorm(N, eps=1e-6)
    norm.weight.data = 1 + 0.3 * torch.randn(N, generator=g)
    W = torch.randn(V, N, generator=g)
    return Head(W, norm.weight, 1e-6), norm, W


def test_steering_puts_the_answer_first_by_the_margin_and_leaves_answered_rows_alone():
    head, norm, W = _head()
    g = torch.Generator().manual_seed(1)
    h = 3 * torch.randn(3, 24, generator=g, dtype=torch.float64)
    R = 0.5 * torch.randn(24, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        before = norm((h + R.T).float()) @ W.T
    targets = (int(before[0].argmin()), int(before[1].argmax()), -1)  # row 0: its worst token; row 1 answered; an anchor
    E = steering(h, R, targets, head, margin=2.0)
    with torch.no_grad():
        after = norm((h + R.T + E.T).float()) @ W.T
    assert _lead(after[0], targets[0]) >= 2.0 - 1e-3  # the exact norm and head agree with the linearized steps
    if _lead(before[1], targets[1]) >= 2.0:  # already first by the margin: nothing added
        assert torch.equal(E[:, 1], torch.zeros(24, dtype=torch.float64))
    else:
        assert _lead(after[1], targets[1]) >= 2.0 - 1e-3
    assert torch.equal(E[:, 2], torch.zeros(24, dtype=torch.float64))  # an anchor has no answer to steer to
    # least norm: a change along the direction that moves the target alone would be no shorter than e
    assert E[:, 0].norm() > 0 and E[:, 0].norm() < (h[0] + R[:, 0]).norm()
    led = steering(h, R + E, targets[:1], head, margin=1.0)  # already leads by 2 > 1: nothing to add
    assert torch.equal(led[:, 0], torch.zeros(24, dtype=torch.float64))
    with pytest.raises(ValueError, match="margin"):
        steering(h, R, targets, head, margin=0.0)


def test_the_row_gains_read_of_the_head_gives_the_logits_steering_starts_from():
    head, norm, W = _head()
    g = torch.Generator().manual_seed(2)
    h = 3 * torch.randn(3, 24, generator=g, dtype=torch.float64)
    R = 0.5 * torch.randn(24, 3, generator=g, dtype=torch.float64)
    gains = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    start = head.logits_at(h, R, gains, head.read(h, R))  # no pass over the head of its own
    with torch.no_grad():
        direct = norm((h + gains[:, None] * R.T).float()) @ W.T
    assert torch.allclose(start.float(), direct, atol=1e-4)
    targets = (int(direct[0].argmin()), int(direct[1].argmin()), int(direct[2].argmax()))
    assert torch.allclose(steering(h, R * gains, targets, head, 1.5, start), steering(h, R * gains, targets, head, 1.5),
                          atol=1e-6)


def _lead(logits: torch.Tensor, target: int) -> float:
    """How far the target's logit is above every other token's."""
    others = logits.clone()
    others[target] = float("-inf")
    return float(logits[target] - others.max())


FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.")


def test_the_editor_adds_the_steering_to_the_gained_change_and_the_rows_record_it(tiny_qwen):
    last = arch.num_layers(tiny_qwen.model) - 1
    editor = QFEditor(tiny_qwen, EditorConfig(layer=last, preserve=0.0, row_gain=2.0, steer=1.0, gate=0.99, answer_gate=0.0))
    joint = editor.joint
    rows = joint.with_gains(editor.capture(FACT))
    assert rows.steer is not None and rows.steer.shape == rows.V.shape and rows.steer_margin == 1.0
    R0 = qf_residual(joint.W0, rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
    R = R0 * rows.gains.double()
    h = rows.V_plain.double() + rows.U_plain.double() @ joint.W0.double().T
    # as the editor decides it: its first step from the logits of the gains' read of the head (float32 there,
    # so a near tie among the tokens to hold may fall otherwise than in a float64 read of its own)
    head = editor._head()
    E = steering(h, R, rows.targets, head, 1.0, head.logits_at(h, R0, rows.gains, head.read(h, R0)))
    assert E.abs().max() > 0  # a random model's instructed pass does not name the answer: steered
    assert torch.allclose(joint.residual(rows), R + E, atol=1e-6 * float(E.abs().max()))
    editor.learn(FACT, verify=False)  # the fact's rows now predict its answer, each first (a lone neuron per row)
    with torch.no_grad():
        recent = rows.recent[:, -editor.neurons.refractory:]  # the refractory rule (on by default), as in the solve
        x = rows.V_plain + editor.neurons.output(editor.model.get_submodule(editor.norm_name)(rows.V_plain), recent=recent)
        after = editor.model.lm_head(editor.model.model.norm(x))
    assert after.argmax(-1).tolist() == list(rows.targets)
    with pytest.raises(ValueError, match="row gains"):
        QFEditor(tiny_qwen, EditorConfig(layer=last, row_gain=0.0, steer=1.0, gate=0.99))


def test_the_ledger_records_the_steering_and_a_reload_does_not_read_the_head_again(store, tokenizer, monkeypatch):
    from tests.test_row_gain import reloaded_without_the_head

    config = EditorConfig(max_answer_tokens=4, verify_tokens=4, steer=1.0)
    other = EditorConfig(max_answer_tokens=4, verify_tokens=4, steer=2.0)  # another margin: decided anew
    recorded = reloaded_without_the_head(store, tokenizer, monkeypatch, config, "steering", other)
    assert all(c["steer"].shape == c["V"].shape and float(c["steer_margin"]) == 1.0 for c in recorded)
