"""The subject-centered gate (memory.subject_center, --subject-centered): where its subject is named a
neuron compares the question with its row after removing the subject's mean, so another question about
the subject no longer fires it while a reworded one still does; the centered cosines at inference are
the direct ones; the solve meets every row with facts about one subject firing each other by the
centered cosine; undo stays exact; the ledger stores the subject mean, rebuilds the same neurons, and
computes the mean of a fact learned without it; the editor and CLI refuse it without a subject gate."""

from dataclasses import replace

import pytest
import torch

from memory.consolidate import EditorConfig, QFEditor
from memory.gated import GatedMemory, gate, named_gate, unit_rows
from memory.subject_center import (SUBJECT_MEAN_RELATIONS, centered_cosines, centered_keys, centered_offsets,
                                   subject_mean_questions)
from tests.test_answer_gate import cli_learns_with, undoing_fact_1_is_never_having_it

WIDTH = 16
ONE = torch.ones(1, dtype=torch.float64)
NAMED = torch.tensor([[True]])


def test_the_centered_cosines_are_the_cosines_of_the_centered_vectors():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 4, WIDTH, generator=g)
    means = 5 * torch.randn(3, WIDTH, generator=g)  # one per subject
    subject_of = torch.tensor([0, 2, 2, 1, 0, 1])  # six neurons
    keys = centered_keys(torch.randn(6, WIDTH, generator=g) + means[subject_of], means[subject_of])
    direct = (unit_rows(x[..., None, :] - means[subject_of]) * keys).sum(-1)
    offsets = centered_offsets(means, keys, subject_of)
    assert torch.allclose(centered_cosines(x, means, keys, subject_of, offsets), direct, atol=1e-5)


def test_the_subject_mean_is_taken_over_questions_of_every_kind_put_as_the_template_puts_them():
    plain, chat = subject_mean_questions("Toko Yasuda", chat=False), subject_mean_questions("Toko Yasuda", chat=True)
    assert len(plain) == len(chat) == len(SUBJECT_MEAN_RELATIONS) == len(set(plain))
    assert {kind for kind, _ in SUBJECT_MEAN_RELATIONS} == {0, 1, 2}
    assert plain[0] == "Toko Yasuda was born in" and chat[0] == "Where was Toko Yasuda born?"


def _subject_questions(generator):
    """A subject mean m that dominates every question about the subject, a fact's row m + r, a rewording
    of it and another question about the subject: a raw cosine of 0.95 or more for both."""
    mean = 6 * unit_rows(torch.randn(1, WIDTH, generator=generator))[0]
    r, other = (unit_rows(torch.randn(1, WIDTH, generator=generator))[0] for _ in range(2))
    reworded = unit_rows((0.95 * r + 0.4 * unit_rows(torch.randn(1, WIDTH, generator=generator))[0])[None])[0]
    return mean, (mean + r)[None], (mean + reworded)[None], (mean + other)[None]


def test_a_centered_neuron_fires_on_a_rewording_not_on_another_question_about_its_subject():
    g = torch.Generator().manual_seed(1)
    mean, X, reworded, other = _subject_questions(g)
    R = torch.randn(1, WIDTH, generator=g, dtype=torch.float64)
    subject = torch.randn(8, generator=g)
    raw = GatedMemory(WIDTH, tau=1.0, tau_named=0.85)
    raw.add("a", X, R, ONE, subject_key=subject)
    centered = GatedMemory(WIDTH, tau=1.0, tau_named=0.85, subject_centered=True)
    centered.add("a", X, R, ONE, subject_key=subject, subject_mean=mean)
    assert float(unit_rows(other) @ unit_rows(X).T) > 0.85  # the raw cosine: the other question fires it
    assert raw.solve().output(other, NAMED).abs().max() > 0.1
    neurons = centered.solve()
    assert neurons.output(X, NAMED).double() == pytest.approx(R.float().double(), abs=1e-4)  # its own question
    assert torch.equal(neurons.output(other, NAMED), torch.zeros_like(other))
    assert neurons.output(reworded, NAMED).abs().max() > 0.1
    assert torch.equal(neurons.output(X, torch.tensor([[False]])), torch.zeros_like(X))  # not named: gate 1


def test_facts_about_one_subject_fire_each_other_by_the_centered_cosine_rows_are_met_and_undo_is_exact():
    g = torch.Generator().manual_seed(2)
    mean, X1, reworded, other = _subject_questions(g)
    subject = torch.randn(8, generator=g)
    R1, R2, R3 = (torch.randn(1, WIDTH, generator=g, dtype=torch.float64) for _ in range(3))
    memory = GatedMemory(WIDTH, tau=1.0, tau_named=0.85, subject_centered=True)
    memory.add("a", X1, R1, ONE, subject_key=subject, subject_mean=mean)
    memory.add("b", reworded, R2, ONE, subject_key=subject + 0.01 * torch.randn(8, generator=g), subject_mean=mean)
    memory.add("c", other, R3, ONE, subject_key=subject, subject_mean=mean)
    pairs = memory._centered_pairs()
    assert {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("a", "a")} <= set(pairs)
    neurons = memory.solve()
    for X, R in ((X1, R1), (reworded, R2), (other, R3)):  # every row its residual, a and b firing each other
        assert torch.allclose(neurons.output(X, torch.ones(1, 3, dtype=torch.bool)).double(), R, atol=2e-2)
    alone = GatedMemory(WIDTH, tau=1.0, tau_named=0.85, subject_centered=True)
    for key, X, R in (("a", X1, R1), ("c", other, R3)):
        alone.add(key, X, R, ONE, subject_key=subject, subject_mean=mean)
    memory.remove("b")
    probe, named = torch.cat([X1, reworded, other]), torch.ones(3, 2, dtype=torch.bool)
    assert torch.equal(memory.solve().output(probe, named), alone.solve().output(probe, named))


def test_each_neuron_reads_its_own_subjects_mean_among_facts_with_other_subjects_and_none():
    g = torch.Generator().manual_seed(3)
    memory = GatedMemory(WIDTH, tau=1.0, tau_named=0.5, subject_centered=True)
    facts = []
    for key, has_subject in (("a", True), ("none", False), ("b", True)):
        mean = 4 * torch.randn(WIDTH, generator=g)
        X, R = mean + torch.randn(1, WIDTH, generator=g), torch.randn(1, WIDTH, generator=g, dtype=torch.float64)
        subject = torch.randn(8, generator=g) if has_subject else None
        memory.add(key, X, R, ONE, subject_key=subject, subject_mean=mean if has_subject else None)
        facts.append((X, R))
    neurons = memory.solve()
    assert neurons.subject_means.shape == (2, WIDTH) and neurons.subject_of.tolist() == [0, -1, 1]
    for i, (X, R) in enumerate(facts):  # each row its own residual, its subject named (the fact with none: above 0.85)
        named = torch.tensor([[i == 0, i == 2]])
        assert torch.allclose(neurons.output(X, named).double(), R, atol=1e-4)


def test_a_named_neuron_fires_at_its_whole_value_from_the_full_cosine_up():
    cos = torch.tensor([-0.2, 0.1, 0.3, 0.5, 0.7, 1.0])
    assert torch.equal(named_gate(cos, 0.1, 0.0, 1.0), gate(cos, 0.1))  # full 1: the plain ramp
    steep = named_gate(cos, 0.1, 0.0, 0.5)
    assert steep.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    primed = named_gate(cos, 0.3, 0.4, 0.5)  # with a prime: the larger of the two
    assert primed.tolist() == pytest.approx([0.0, 0.0, 0.4 * 0.2 / 0.9, 1.0, 1.0, 1.0])


def test_with_a_full_cosine_a_rewording_gets_the_whole_value_and_the_rows_are_still_met():
    g = torch.Generator().manual_seed(1)
    mean, X, reworded, other = _subject_questions(g)
    R = torch.randn(1, WIDTH, generator=g, dtype=torch.float64)
    subject = torch.randn(8, generator=g)
    cos = float(centered_keys(reworded, mean) @ centered_keys(X, mean).T)
    assert 0.8 < cos < 1
    ramp, full = (GatedMemory(WIDTH, tau=1.0, tau_named=0.5, subject_centered=True, full=f) for f in (1.0, 0.8))
    for memory in (ramp, full):
        memory.add("a", X, R, ONE, subject_key=subject, subject_mean=mean)
    partial, whole = (m.solve().output(reworded, NAMED).double() for m in (ramp, full))
    assert torch.allclose(partial, (cos - 0.5) / 0.5 * R, atol=1e-4)
    assert torch.allclose(whole, R, atol=1e-4) and full.solve().full == 0.8
    assert torch.equal(full.solve().output(other, NAMED), torch.zeros_like(other))  # another question: nothing
    # two rows of one fact between the subject gate and the full cosine fire each other partly: still both met
    second = mean + unit_rows((0.65 * (X - mean) / (X - mean).norm() + 0.76 * unit_rows(torch.randn(1, WIDTH, generator=g))))
    rows, R2 = torch.cat([X, second]), torch.randn(2, WIDTH, generator=g, dtype=torch.float64)
    two = GatedMemory(WIDTH, tau=1.0, tau_named=0.5, subject_centered=True, full=0.8)
    two.add("b", rows, R2, torch.ones(2, dtype=torch.float64), subject_key=subject, subject_mean=mean)
    assert 0 < float(two.activation(centered_keys(rows, mean)[0] @ centered_keys(rows, mean)[1], "b", "b")) < 1
    assert torch.allclose(two.solve().output(rows, NAMED.expand(2, 1)).double(), R2, atol=2e-2)  # to the ridge


def test_the_rows_within_an_answer_keep_the_ramp_so_that_close_ones_are_still_told_apart():
    g = torch.Generator().manual_seed(2)
    mean, X, reworded, _ = _subject_questions(g)
    subject = torch.randn(8, generator=g)
    # the answer's later rows (a year's digits): close to one another (centered cosine about 0.8), far from its opening
    digit = unit_rows(torch.randn(1, WIDTH, generator=g))
    later = mean + unit_rows(0.9 * digit + 0.45 * unit_rows(torch.randn(2, WIDTH, generator=g)))
    rows, R = torch.cat([X, later]), torch.randn(3, WIDTH, generator=g, dtype=torch.float64)
    Xc = centered_keys(rows, mean)
    assert 0.7 < float(Xc[1] @ Xc[2]) < 0.9 and float((Xc[0] @ Xc[1:].T).abs().max()) < 0.2
    fit = {}
    for name, openings in (("every row", None), ("the opening", torch.tensor([True, False, False]))):
        memory = GatedMemory(WIDTH, tau=1.0, tau_named=0.1, subject_centered=True, full=0.5)
        memory.add("a", rows, R, torch.ones(3, dtype=torch.float64), subject_key=subject, subject_mean=mean,
                   openings=openings)
        neurons = memory.solve()
        fit[name] = (neurons.output(rows, NAMED.expand(3, 1)).double() - R).norm(dim=1) / R.norm(dim=1)
        if openings is not None:  # its whole value on a rewording, at the opening's neuron alone
            assert neurons.full.tolist() == [0.5, 1.0, 1.0]
            assert float(memory.activation(Xc[1] @ Xc[2], "a", "a", torch.tensor(2))) == pytest.approx(
                (float(Xc[1] @ Xc[2]) - 0.1) / 0.9, abs=1e-6)
            assert float(named_gate(centered_keys(reworded, mean) @ Xc[0], 0.1, 0.0, neurons.full[0])) == 1.0
    assert float(fit["every row"][1:].min()) > 0.2  # both later rows at their whole value: one sum for both
    assert float(fit["the opening"].max()) < 0.05  # the ramp tells them apart (to the ridge)
    with pytest.raises(ValueError, match="one flag per row"):
        GatedMemory(WIDTH, tau=1.0, tau_named=0.1, full=0.5).add("b", rows, R, torch.ones(3, dtype=torch.float64),
                                                                  subject_key=subject, openings=torch.ones(2, dtype=torch.bool))


def test_a_facts_rows_say_where_each_answer_opens(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(gate=1.0, subject_gate=0.5, answer_gate=0.0, anchors=2))
    fact = replace(_facts()[0], phrasings=("Who runs Oxinnovate?",))
    rows = editor.capture(fact)
    per = len(rows.targets[: rows.num_rows - rows.anchors]) // 2  # two questions, the same answer: equal blocks
    expected = [t % per == 0 for t in range(2 * per)] + [True] * rows.anchors  # an anchor is a question's end too
    assert rows.queries == 2 and rows.anchors == 2 and rows.openings.tolist() == expected


def test_the_centered_gate_and_full_cosine_refuse_what_they_cannot_do(tiny_qwen):
    with pytest.raises(ValueError, match="needs a subject gate"):
        GatedMemory(WIDTH, tau=0.9, subject_centered=True)
    with pytest.raises(ValueError, match="needs a subject gate"):
        GatedMemory(WIDTH, tau=0.9, full=0.5)
    with pytest.raises(ValueError, match="above the subject gate"):
        GatedMemory(WIDTH, tau=1.0, tau_named=0.5, full=0.4)
    with pytest.raises(ValueError, match="needs --subject-gate"):
        QFEditor(tiny_qwen, EditorConfig(gate=0.9, subject_gate=0.0, subject_full=0.5))
    with pytest.raises(ValueError, match="must be above --subject-gate"):
        QFEditor(tiny_qwen, EditorConfig(gate=1.0, subject_gate=0.5, subject_full=0.3))
    memory = GatedMemory(WIDTH, tau=1.0, tau_named=0.85, subject_centered=True)
    with pytest.raises(ValueError, match="subject mean"):
        memory.add("a", torch.randn(1, WIDTH), torch.randn(1, WIDTH), ONE, subject_key=torch.randn(8))
    memory.add("b", torch.randn(1, WIDTH), torch.randn(1, WIDTH), ONE)  # no subject: no mean needed
    with pytest.raises(ValueError, match="needs --subject-gate"):
        QFEditor(tiny_qwen, EditorConfig(gate=0.9, subject_gate=0.0, subject_centered=True))


def test_the_facts_about_one_subject_share_its_mean_until_what_is_below_changes(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(gate=1.0, subject_gate=0.5, subject_centered=True, answer_gate=0.0))
    computed = []
    capture = editor.capture_anchors
    editor.capture_anchors = lambda prompts: computed.append(len(prompts)) or capture(prompts)
    first, second = _facts()[:2]  # both about Oxinnovate
    editor.learn(first, verify=False)
    editor.learn(second, verify=False)
    assert computed == [len(SUBJECT_MEAN_RELATIONS)]  # the second fact took the first's mean
    means = editor.neurons.subject_means  # one per fact with a subject, in order
    torch.testing.assert_close(means[0], means[1], rtol=0, atol=0)
    with torch.no_grad():  # a write below the edited layer (another layer's linear facts): computed again
        tiny_qwen.model.get_parameter("model.layers.0.self_attn.q_proj.weight").mul_(1.5)
    editor.learn(replace(first, query="Who started Oxinnovate?"), verify=False)
    assert computed == [len(SUBJECT_MEAN_RELATIONS)] * 2
    assert not torch.allclose(editor.neurons.subject_means[-1], means[0])
    QFEditor(tiny_qwen, EditorConfig(layer=1)).learn(first, verify=False)  # gated neurons below: hooks, not weights
    editor.learn(replace(first, query="Who set up Oxinnovate?"), verify=False)
    assert computed == [len(SUBJECT_MEAN_RELATIONS)] * 3  # not taken from before they were there


def _facts():
    from tests.test_ledger_editor import FACTS

    return [replace(f, subject=s) for f, s in zip(FACTS, ("Oxinnovate", "Oxinnovate", "my daughter"))]


def test_the_ledger_rebuilds_the_same_centered_neurons_and_undo_is_exact(store, tokenizer, tmp_path):
    from agent.ledger_editor import LedgerEditor
    from tests.test_ledger_editor import fresh, logits

    facts = _facts()
    config = EditorConfig(gate=1.0, subject_gate=0.5, subject_centered=True, subject_full=0.7, gain=1.0, answer_gate=0.0)
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    learned = [first.learn(f) for f in facts]
    neurons = first.current.neurons
    assert neurons.subject_means is not None and neurons.subject_means.shape == (len(neurons.subject_keys), neurons.keys.shape[1])
    assert neurons.subject_means.abs().sum(-1).gt(0).all()  # every fact had its subject's mean
    assert "subject_mean" in store.load_captures(learned[0].edit_id)
    taught = [logits(first, f) for f in facts]
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process: re-solved from the rows
    assert torch.equal(second.current.neurons.values, neurons.values)
    assert torch.equal(second.current.neurons.centered_keys, neurons.centered_keys)
    assert all(torch.allclose(logits(second, f), taught[i], atol=1e-5) for i, f in enumerate(facts))
    hyperparams = store.active_edits(second.checkpoint_id)[0].hyperparams
    assert hyperparams["subject_centered"] is True and hyperparams["subject_full"] == 0.7
    openings = torch.cat([store.load_captures(e.edit_id)["openings"] for e in learned])  # recorded with the rows
    assert openings.dtype == torch.bool and 0 < int(openings.sum()) < len(openings)  # each answer's first row
    torch.testing.assert_close(second.current.neurons.full, torch.where(openings, 0.7, 1.0).double(), rtol=0, atol=0)
    assert undoing_fact_1_is_never_having_it(second, learned, config, tokenizer, tmp_path, facts)


def test_facts_learned_without_the_centered_gate_get_their_subject_mean_when_loaded_with_it(store, tokenizer, tmp_path):
    from agent.ledger_editor import LedgerEditor
    from store import Store
    from tests.test_ledger_editor import fresh

    facts = _facts()
    config = EditorConfig(gate=1.0, subject_gate=0.5, gain=1.0, answer_gate=0.0)
    before = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    learned = [before.learn(f) for f in facts]
    assert "subject_mean" not in store.load_captures(learned[0].edit_id)
    centered = replace(config, subject_centered=True)
    loaded = LedgerEditor(store, fresh("qwen2", tokenizer), centered)
    other = Store(f"sqlite:///{tmp_path / 'centered.db'}", tmp_path / "centered-tensors")
    direct = LedgerEditor(other, fresh("qwen2", tokenizer), centered)
    for f in facts:
        direct.learn(f)
    assert torch.allclose(loaded.current.neurons.subject_means, direct.current.neurons.subject_means, atol=1e-5)
    assert torch.allclose(loaded.current.neurons.values, direct.current.neurons.values, atol=1e-4)
    other.close()


def test_the_cli_learns_with_the_centered_gate_and_refuses_it_without_a_subject_gate(tiny_model_dir):
    cli_learns_with(tiny_model_dir, ["--subject-centered"], "subject_centered", ["--gate", "0.9"],
                    "needs --subject-gate", value=True)


def test_the_cli_learns_with_a_full_cosine_and_refuses_it_without_a_subject_gate(tiny_model_dir):
    cli_learns_with(tiny_model_dir, ["--subject-full", "0.9"], "subject_full", ["--gate", "0.9"], "needs --subject-gate")
