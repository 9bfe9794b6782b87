"""Row gains (memory.row_gain, --row-gain): the head's logits read in closed form, the rule on a
constructed case, the solve meeting each row's scaled residual, and the editor's refusals."""

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from memory import architecture as arch
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.qf import qf_residual
from memory.row_gain import Head, gain_grid, row_gains

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.")


def test_the_head_read_in_closed_form_is_the_norm_then_the_head():
    torch.manual_seed(0)
    N, V = 24, 50
    norm = Qwen2RMSNorm(N, eps=1e-6)
    norm.weight.data = 1 + 0.3 * torch.randn(N)
    W = torch.randn(V, N)
    head = Head(W, norm.weight, 1e-6)
    h, R = 3 * torch.randn(4, N), torch.randn(N, 4)
    a, b = head.read(h, R)
    scales = torch.tensor([0.0, 0.5, 1.0, 2.5])
    for t in range(4):
        got = head.scale(h[t], R[:, t], scales)[:, None] * (a[t] + scales[:, None] * b[t])
        want = torch.stack([norm(h[t] + c * R[:, t]) @ W.T for c in scales])
        assert torch.allclose(got, want, atol=1e-4)


def _one_hot_head(V: int = 4) -> Head:
    """Logits = the residual's own coordinates (times one positive number): argmax is read off directly."""
    return Head(torch.eye(V), torch.ones(V), 1e-6)


def test_a_row_gets_the_smallest_gain_that_holds_its_token_whole_and_at_half():
    head = _one_hot_head()
    h = torch.tensor([[2.0, 0, 0, 0]] * 3, dtype=torch.float64)  # the plain pass says token 0
    r = torch.tensor([-0.5, 1.0, 0, 0], dtype=torch.float64)  # towards token 1: first once c > 4/3
    R = torch.stack([r, r, torch.tensor([0.0, 0, -1.0, 0], dtype=torch.float64)], 1)
    # rows 0, 1: whole and half (c/2 > 4/3) from 2.75; row 2 moves away from its token 2, which is
    # never first: the gain that makes it likeliest, the least
    assert row_gains(h, R, (1, 1, 2), head, 3.0).tolist() == [2.75, 2.75, 1.0]
    # up to 2 the half share never reaches it: the smallest gain at which the whole change does
    assert row_gains(h, R[:, [0, 1, 1]], (1, -1, 1), head, 2.0).tolist() == [1.5, 1.0, 1.5]  # an anchor row (-1) keeps 1
    # a row already answered by the instructed pass at gain 1, whole and at half, stays at 1
    assert row_gains(h, 10 * R[:, :1], (1,), head, 3.0).tolist() == [1.0]
    assert gain_grid(2.0).tolist() == [1.0, 1.25, 1.5, 1.75, 2.0]
    with pytest.raises(ValueError, match=">= 1"):
        gain_grid(0.5)


@pytest.mark.parametrize("gate", [0.0, 0.85])
def test_the_editor_writes_each_row_its_own_gain_times_the_instructed_change(gate, tiny_qwen):
    last = arch.num_layers(tiny_qwen.model) - 1
    config = EditorConfig(layer=last, preserve=0.0, row_gain=3.0, steer=0.0, gate=gate, ridge=1e-9,
                          answer_gate=0.0)  # the gains alone
    editor = QFEditor(tiny_qwen, config)
    rows = editor.capture(FACT)
    joint = editor.joint
    R = qf_residual(joint.W0, rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
    h = rows.V_plain.double() + rows.U_plain.double() @ joint.W0.double().T
    gains = row_gains(h, R, rows.targets, editor._head(), 3.0)
    assert torch.allclose(joint.residual(rows), R * gains, atol=1e-9)
    editor.learn(FACT, verify=False)
    if gate:  # the fact's lone neurons carry each row's scaled residual
        recent = rows.recent[:, -editor.neurons.refractory:]  # the refractory rule (on by default), as in the solve
        written = editor.neurons.output(rows.V_plain.to(editor.neurons.keys.dtype), recent=recent).double().T
    else:  # dW u'_t = g_t r_t on the fact's rows
        written = editor.delta.dense().double() @ rows.U_plain.double().T
    assert torch.allclose(written, R * gains, atol=1e-3 * float(R.abs().max() * gains.max()))


def test_row_gains_are_refused_where_the_head_does_not_read_the_layer(tiny_qwen):
    with pytest.raises(ValueError, match="last layer"):
        QFEditor(tiny_qwen, EditorConfig(layer=1, row_gain=3.0))
    with pytest.raises(ValueError, match="last layer"):
        QFEditor(tiny_qwen, EditorConfig(layer=3, spread=2, row_gain=3.0))
    with pytest.raises(ValueError, match=">= 1"):
        QFEditor(tiny_qwen, EditorConfig(layer=3, row_gain=0.5, preserve=0.0))


def test_the_default_is_gated_neurons_with_row_gains_and_steering_where_the_head_reads_the_layer(tiny_qwen):
    from memory.answering import (DEFAULT_GATE, DEFAULT_REFRACTORY, DEFAULT_ROW_GAIN, DEFAULT_STEER, DEFAULT_SUBJECT_GATE,
                                  PAPER_RULE, with_defaults_decided)
    from memory.gated import DEFAULT_THRESHOLD

    last = arch.num_layers(tiny_qwen.model) - 1
    editor = QFEditor(tiny_qwen, EditorConfig())
    assert (editor.layer, editor.config.gate, editor.config.row_gain) == (last, DEFAULT_GATE, DEFAULT_ROW_GAIN)
    assert editor.config.steer == DEFAULT_STEER > 0 and editor.joint.steer_margin == DEFAULT_STEER
    assert editor.config.subject_gate == DEFAULT_SUBJECT_GATE < DEFAULT_GATE  # subject gating on by default
    assert editor.gated.tau_unknown == DEFAULT_THRESHOLD  # a fact with no subject: as the gate alone does best
    assert editor.config.refractory == editor.gated.refractory == DEFAULT_REFRACTORY > 0  # the refractory rule too
    given = with_defaults_decided(EditorConfig(gate=0.99), last_layer=True)
    assert given.subject_gate == 0.0  # a --gate given is that gate alone
    # gate 1 given, which needs a subject gate, comes with the default's
    assert with_defaults_decided(EditorConfig(gate=1.0), last_layer=True).subject_gate == DEFAULT_SUBJECT_GATE
    with pytest.raises(ValueError, match="needs --subject-gate"):  # gate 1 fires nowhere without a subject gate
        QFEditor(tiny_qwen, EditorConfig(gate=1.0, subject_gate=0.0))
    assert editor.given == EditorConfig() and editor.gated is not None
    below = QFEditor(tiny_qwen, EditorConfig(layer=1)).config  # the head does not read layer 1: the fixed gain
    assert (below.gate, below.row_gain, below.steer) == (DEFAULT_GATE, 0.0, 0.0)  # and no steering without row gains
    for linear_only in (dict(spread=2), dict(soft_anchors=1.0, anchors=1), dict(near_questions=2)):
        decided = with_defaults_decided(EditorConfig(**linear_only), last_layer=True)
        assert (decided.gate, decided.row_gain, decided.steer) == (0.0, 0.0, 0.0)
    linear = with_defaults_decided(EditorConfig(gate=0.0), last_layer=True)  # given settings are kept
    assert (linear.gate, linear.row_gain, linear.steer, linear.refractory) == (0.0, 0.0, 0.0, 0)
    assert with_defaults_decided(EditorConfig(steer=0.0), last_layer=True).steer == 0.0  # steering off, given
    paper = with_defaults_decided(EditorConfig(**PAPER_RULE), last_layer=True)
    assert (paper.gate, paper.row_gain, paper.gain, paper.steer, paper.refractory) == (0.0, 0.0, 1.0, 0.0, 0)


def test_the_ledger_records_the_row_gains_and_a_reload_does_not_read_the_head_again(store, tokenizer, monkeypatch):
    config = EditorConfig(max_answer_tokens=4, verify_tokens=4)  # the default: gated, row gains up to 4
    recorded = reloaded_without_the_head(store, tokenizer, monkeypatch, config, "row_gains",
                                         other=EditorConfig(row_gain=3.0))  # other settings: decided anew
    assert all(c["gains"].shape == c["targets"].shape and float(c["gains_max"]) == 4.0 for c in recorded)


def reloaded_without_the_head(store, tokenizer, monkeypatch, config: EditorConfig, reads_head: str,
                              other: EditorConfig) -> list[dict]:
    """Learn the ledger tests' facts under ``config``; then a new process's load under it must give the
    same logits with ``memory.joint.<reads_head>`` made to fail, and one under ``other`` must call it.
    Returns the captures recorded with each edit."""
    from agent.ledger_editor import LedgerEditor
    from memory import joint
    from tests.test_ledger_editor import FACTS, fresh, logits

    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    for fact in FACTS:
        first.learn(fact)
    taught = [logits(first, f) for f in FACTS]
    recorded = [store.load_captures(e.id) for e in store.active_edits(first.checkpoint_id)]

    def no_head(*args, **kwargs):
        raise AssertionError("the head was read again")

    monkeypatch.setattr(joint, reads_head, no_head)
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process
    assert all(torch.equal(logits(second, f), t) for f, t in zip(FACTS, taught))
    with pytest.raises(AssertionError, match="read again"):
        LedgerEditor(store, fresh("qwen2", tokenizer), other)
    return recorded
