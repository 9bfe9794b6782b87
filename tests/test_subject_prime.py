"""The subject prime (memory.gated.named_gate, --subject-prime): once its subject is named a fact's
neurons also fire weakly below the subject gate, growing with the cosine; nowhere where the subject is
not named; the solve meets every row with facts about one subject priming each other; undo stays
exact; the ledger keeps the setting; the editor and CLI refuse it without a subject gate."""

from dataclasses import replace

import pytest
import torch

from memory.consolidate import EditorConfig, QFEditor
from memory.gated import PRIME_FROM, GatedMemory, gate, named_gate, unit_rows
from tests.test_answer_gate import cli_learns_with, undoing_fact_1_is_never_having_it
from tests.test_subject_gate import _at_cosine

ONE = torch.ones(1, dtype=torch.float64)
NAMED, UNNAMED = torch.tensor([[True]]), torch.tensor([[False]])


def test_named_gate_is_the_subject_gate_with_a_weak_ramp_below_it():
    cos = torch.tensor([-0.5, 0.05, PRIME_FROM, 0.5, 0.85, 0.9, 1.0])
    assert torch.equal(named_gate(cos, 0.85, 0.0), gate(cos, 0.85))
    primed = named_gate(cos, 0.85, 0.3)
    assert torch.equal(primed, torch.maximum(gate(cos, 0.85), 0.3 * gate(cos, PRIME_FROM)))
    assert primed[:3].tolist() == [0.0, 0.0, 0.0] and 0 < primed[3] < 0.3 and float(primed[-1]) == pytest.approx(1.0)
    assert primed[4] == pytest.approx(0.3 * (0.85 - PRIME_FROM) / (1 - PRIME_FROM))  # the ramp still leads at 0.85


def test_a_primed_neuron_fires_weakly_below_the_subject_gate_only_where_its_subject_is_named():
    g = torch.Generator().manual_seed(0)
    memory = GatedMemory(16, tau=1.0, tau_named=0.85, prime=0.3)
    X = unit_rows(torch.randn(1, 16, generator=g))
    R = torch.randn(1, 16, generator=g, dtype=torch.float64)
    memory.add("a", X, R, ONE, subject_key=torch.randn(8, generator=g))
    neurons = memory.solve()
    assert neurons.prime == 0.3
    assert neurons.output(X, NAMED).double() == pytest.approx(R.float().double(), abs=1e-5)  # its own question
    probe = _at_cosine(X[0], 0.55, g)[None]  # another question about the subject
    expected = 0.3 * (0.55 - PRIME_FROM) / (1 - PRIME_FROM) * R.float()
    assert torch.allclose(neurons.output(probe, NAMED), expected, atol=1e-5)
    assert torch.equal(neurons.output(probe, UNNAMED), torch.zeros_like(probe))  # the subject not named
    far = _at_cosine(X[0], 0.05, g)[None]
    assert torch.equal(neurons.output(far, NAMED), torch.zeros_like(far))
    unprimed = GatedMemory(16, tau=1.0, tau_named=0.85)
    unprimed.add("a", X, R, ONE, subject_key=memory._S["a"])
    assert torch.equal(unprimed.solve().output(probe, NAMED), torch.zeros_like(probe))


def test_facts_about_one_subject_prime_each_other_every_row_is_still_met_and_undo_is_exact():
    g = torch.Generator().manual_seed(1)
    subject = torch.randn(8, generator=g)
    X1 = unit_rows(torch.randn(2, 16, generator=g))
    X2 = _at_cosine(X1[0], 0.6, g)[None]  # another question about the subject: below 0.85, above PRIME_FROM
    R1, R2 = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.randn(1, 16, generator=g, dtype=torch.float64)
    memory = GatedMemory(16, tau=1.0, tau_named=0.85, prime=0.3)
    memory.add("a", X1, R1, torch.ones(2, dtype=torch.float64), subject_key=subject)
    memory.add("b", X2, R2, ONE, subject_key=subject + 0.01 * torch.randn(8, generator=g))
    assert memory.threshold("a", "b") == PRIME_FROM and ("b", "a") in memory._near  # primed: they interact
    assert float(memory.activation(torch.tensor(0.6), "b", "a")) == pytest.approx(0.3 * 0.5 / 0.9)
    neurons = memory.solve()
    named = torch.tensor([[True, True]])
    for X, R in ((X1, R1), (X2, R2)):  # each row gets its residual, the others' weak firing accounted for
        assert torch.allclose(neurons.output(X, named.expand(X.shape[0], 2)).double(), R, atol=2e-2)
    alone = GatedMemory(16, tau=1.0, tau_named=0.85, prime=0.3)
    alone.add("a", X1, R1, torch.ones(2, dtype=torch.float64), subject_key=subject)
    memory.remove("b")
    probe = torch.cat([X1, X2])
    named = torch.ones(3, 1, dtype=torch.bool)
    assert torch.equal(memory.solve().output(probe, named), alone.solve().output(probe, named))


def test_a_prime_needs_a_subject_gate_and_a_share_of_at_most_one(tiny_qwen):
    with pytest.raises(ValueError, match="needs a subject gate"):
        GatedMemory(16, tau=0.9, prime=0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GatedMemory(16, tau=1.0, tau_named=0.85, prime=1.5)
    with pytest.raises(ValueError, match="needs --subject-gate"):
        QFEditor(tiny_qwen, EditorConfig(gate=0.9, subject_gate=0.0, subject_prime=0.3))


def test_the_ledger_rebuilds_the_same_primed_neurons_and_undo_is_exact(store, tokenizer, tmp_path):
    from agent.ledger_editor import LedgerEditor
    from store import Store
    from tests.test_ledger_editor import FACTS, fresh, logits

    facts = [replace(f, subject=s) for f, s in zip(FACTS, ("Oxinnovate", "Oxinnovate", "my daughter"))]
    config = EditorConfig(gate=1.0, subject_gate=0.85, subject_prime=0.5, gain=1.0, answer_gate=0.0)
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    learned = [first.learn(f) for f in facts]
    assert first.current.neurons.prime == 0.5 and first.current.neurons.subject_gated
    unprimed = Store(f"sqlite:///{tmp_path / 'unprimed.db'}", tmp_path / "unprimed-tensors")
    plain = LedgerEditor(unprimed, fresh("qwen2", tokenizer), replace(config, subject_prime=0.0))
    for f in facts:
        plain.learn(f)
    # the same rows, but rows naming a subject now fire its neurons below the subject gate: other values
    assert not torch.equal(plain.current.neurons.values, first.current.neurons.values)
    unprimed.close()
    taught = [logits(first, f) for f in facts]
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process: re-solved from the rows
    assert torch.equal(second.current.neurons.values, first.current.neurons.values)
    assert all(torch.allclose(logits(second, f), taught[i], atol=1e-5) for i, f in enumerate(facts))
    assert store.active_edits(second.checkpoint_id)[0].hyperparams["subject_prime"] == 0.5
    assert undoing_fact_1_is_never_having_it(second, learned, config, tokenizer, tmp_path, facts)


def test_the_cli_learns_with_a_subject_prime_and_refuses_it_without_a_subject_gate(tiny_model_dir):
    cli_learns_with(tiny_model_dir, ["--subject-prime", "0.3"], "subject_prime", ["--gate", "0.9"],
                    "needs --subject-gate")
