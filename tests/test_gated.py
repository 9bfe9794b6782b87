"""Key-gated neurons (memory.gated, --gate): exact on the fact's rows, silent far from its keys,
order-independent, exact undo; the editor and the cached scorer with them on tiny models."""

from dataclasses import replace

import pytest
import torch

from bench.datasets import Poser
from bench.edits import scored_pairs, teacher_forced
from bench.last_layer import LastLayerScorer
from memory import architecture as arch
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.gated import GatedMemory, gate, groups, installed_patch, unit_rows
from memory.prompts import build_pass, instructed_system
from tests.test_bench_last_layer import _cases, _tokens

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.")
OTHER = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?", "In Beijing.")


def _fact(generator, rows=3, width=16, near: torch.Tensor | None = None):
    """Keys (rows, width), residuals and weights; with ``near``, keys within a few degrees of it."""
    X = torch.randn(rows, width, generator=generator)
    if near is not None:
        X = near + 0.4 * X * near.norm() / X.norm(dim=-1, keepdim=True)
    return X, torch.randn(rows, width, generator=generator, dtype=torch.float64), torch.ones(rows, dtype=torch.float64)


def test_the_rows_get_their_residual_exactly_and_far_keys_get_nothing():
    g = torch.Generator().manual_seed(0)
    memory = GatedMemory(16, tau=0.9)
    X1, R1, w1 = _fact(g)
    X2, R2, w2 = _fact(g, near=X1[0])  # keys close to fact 1's first row: their neurons interact
    memory.add("a", X1, R1, w1)
    memory.add("b", X2, R2, w2)
    neurons = memory.solve()
    assert neurons.count == 6
    assert len(groups(6, torch.tensor([[0, 3], [3, 4]]))) == 4  # the helper: {0, 3, 4}, {1}, {2}, {5}
    assert len(memory._near) == 1  # the two facts' keys fire each other: one group spans both
    for X, R in ((X1, R1), (X2, R2)):  # met up to the ridge's compromise (memory.gated.RIDGE)
        assert neurons.output(X).double() == pytest.approx(R.float().double(), abs=2e-2)
    assert neurons.output(X1[1:2]).double() == pytest.approx(R1[1:2], rel=1e-5)  # a lone neuron: exact (float32)
    far = torch.randn(50, 16, generator=g)
    cos = unit_rows(far) @ neurons.keys.T
    assert (cos < 0.9).all()  # random directions in 16 dimensions are far from every key
    assert torch.equal(neurons.output(far), torch.zeros_like(far))


def test_order_does_not_matter_and_removing_a_fact_is_exact():
    g = torch.Generator().manual_seed(1)
    facts = {"a": _fact(g)}
    facts["b"] = _fact(g, near=facts["a"][0][1])
    facts["c"] = _fact(g)
    forward, backward, without_b = GatedMemory(16, 0.85), GatedMemory(16, 0.85), GatedMemory(16, 0.85)
    for key in facts:
        forward.add(key, *facts[key])
    for key in reversed(facts):
        backward.add(key, *facts[key])
    for key in ("a", "c"):
        without_b.add(key, *facts[key])
    probe = torch.cat([facts[k][0] for k in facts])
    assert forward.solve().output(probe) == pytest.approx(backward.solve().output(probe), abs=1e-5)
    forward.remove("b")
    assert torch.equal(forward.solve().output(probe), without_b.solve().output(probe))
    assert forward.solve().output(facts["b"][0]).abs().max() > 0  # b's keys are near a's: a's neurons reach them


def test_undo_is_bit_exact_whatever_else_was_held_when_a_fact_came():
    """At a real model's width the product of a new fact's keys with every key held rounds each cosine
    by how many keys are held; the pairs that fire keep each cosine taken alone, so a memory that held
    b when c came and then lost b solves exactly what one that never held b solves."""
    g = torch.Generator().manual_seed(0)
    width = 1536
    a = _fact(g, rows=5, width=width)
    b = _fact(g, rows=40, width=width)
    c = _fact(g, rows=6, width=width, near=a[0][0])
    held, never = GatedMemory(width, 0.85), GatedMemory(width, 0.85)
    for key, fact in (("a", a), ("b", b), ("c", c)):
        held.add(key, *fact)
    held.remove("b")
    for key, fact in (("a", a), ("c", c)):
        never.add(key, *fact)
    assert len(never._near) == 1  # c's keys fire a's: one group, solved together
    assert torch.equal(held.solve().values, never.solve().values)


def test_a_row_of_weight_zero_gets_no_neuron_and_the_gate_is_a_thresholded_cosine():
    g = torch.Generator().manual_seed(2)
    X, R, w = _fact(g)
    memory = GatedMemory(16, 0.5)
    memory.add("a", X, R, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert memory.solve().count == 2
    assert gate(torch.tensor([0.4, 0.5, 0.75, 1.0]), 0.5).tolist() == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(KeyError):
        memory.add("a", X, R, w)
    assert gate(torch.tensor([0.5, 1.0, 1.0 + 1e-6]), 1.0).tolist() == [0.0, 0.0, 0.0]  # tau 1: never fires
    assert gate(torch.tensor([0.75, 1.0]), torch.tensor([0.5, 1.0])).tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="threshold"):
        GatedMemory(16, 1.5)
    with pytest.raises(ValueError, match="subject gate"):
        GatedMemory(16, 1.0)  # gate 1 fires only where the subject is named: nothing without subject gating


def _row_logits(model, p):
    with torch.no_grad():
        return model(input_ids=p.input_ids).logits[0, p.rows]


def test_the_editor_writes_neurons_not_down_proj_and_undo_is_exact(tiny):
    last = arch.num_layers(tiny.model) - 1
    editor = QFEditor(tiny, EditorConfig(gate=0.99, gain=1.0, row_gain=0.0))  # tiny keys are close: lone neurons, exact
    weight = tiny.model.get_parameter(editor.parameter)
    base = weight.detach().clone()
    tok = tiny.tokenizer
    instructed = build_pass(tok, FACT.query, FACT.answer, instructed_system(FACT.instruction, None))
    plain = build_pass(tok, FACT.query, FACT.answer)
    target, before = _row_logits(tiny.model, instructed), _row_logits(tiny.model, plain)
    assert (before - target).abs().max() > 1e-3
    editor.learn(FACT, key="a", verify=False)
    editor.learn(OTHER, key="b", verify=False)
    assert editor.layer == last and torch.equal(weight, base)  # down_proj untouched
    assert installed_patch(editor.mlp) is not None and editor.relative_change() == 0
    assert editor.neuron_stats()["neurons"] == editor.gated.num_rows and editor.neuron_stats()["neuron_value_norm"] > 0
    # at the last layer the plain pass now gives the instructed pass's logits at the fact's rows
    assert (_row_logits(tiny.model, plain) - target).abs().max() < 1e-3
    with editor.base_weights():
        assert torch.equal(_row_logits(tiny.model, plain), before)
    assert (_row_logits(tiny.model, plain) - target).abs().max() < 1e-3  # back on after the context
    editor.remove("a")
    editor.remove("b")
    assert installed_patch(editor.mlp) is None
    assert torch.equal(_row_logits(tiny.model, plain), before)


def test_gated_neurons_are_refused_with_spread_or_soft_anchors(tiny_qwen):
    for settings in ({"spread": 2}, {"soft_anchors": 1.0, "anchors": 1}, {"near_questions": 2}):
        with pytest.raises(ValueError, match="--gate"):
            QFEditor(tiny_qwen, EditorConfig(gate=0.9, **settings))


@pytest.mark.parametrize("config, fact", [
    (EditorConfig(gate=0.5, gain=3.0), FACT),
    # subject-gated (memory.subject_gate): fires wherever the subject was named before, as the scorer must see
    (EditorConfig(gate=0.95, subject_gate=0.05, gain=3.0), replace(FACT, subject="Oxinnovate")),
    # answer-gated (memory.answer_gate): the scorer gives the neurons the base model's answer state
    (EditorConfig(gate=0.95, subject_gate=0.05, answer_gate=0.3, gain=3.0), replace(FACT, subject="Oxinnovate")),
], ids=["gated", "subject-gated", "answer-gated"])
def test_the_cached_scorer_sees_the_gated_neurons(tiny_qwen, config, fact):
    editor = QFEditor(tiny_qwen, config)
    poser = Poser(editor.tokenizer, "chat")
    scorer = LastLayerScorer(editor.model, editor.parameter, poser.shared_prefix)
    cases = _cases("zsre")
    for case in cases:
        scorer.prepare(case.index, _tokens(poser, case))
    editor.learn(fact, key="a", verify=False)
    assert editor.neurons.subject_gated == bool(config.subject_gate)
    changed = 0
    for case in cases:
        cached, full = scorer.scores(case.index), teacher_forced(editor.model, poser, scored_pairs(case), None)
        for name in full:
            assert cached[name].logprobs == pytest.approx(full[name].logprobs, abs=1e-4)
        with editor.base_weights():
            base = teacher_forced(editor.model, poser, scored_pairs(case), None)
        changed += any(base[n].logprobs != pytest.approx(full[n].logprobs, abs=1e-4) for n in full)
    assert changed  # the neurons reached some scored prompt, so the comparison above saw them


def test_gated_facts_through_the_ledger_rebuild_undo_and_audit(store, tokenizer, tmp_path):
    from agent.audit import fact_report
    from store import Store
    from agent.ledger_editor import LedgerEditor
    from tests.test_ledger_editor import FACTS, fresh, logits

    config = EditorConfig(gate=0.99, gain=1.0)
    other_store = Store(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-tensors")
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    base = {i: logits(first, f) for i, f in enumerate(FACTS)}
    learned = [first.learn(f) for f in FACTS]
    taught = {i: logits(first, f) for i, f in enumerate(FACTS)}
    assert all((taught[i] - base[i]).abs().max() > 1e-3 for i in base)
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process: neurons rebuilt from the rows
    assert second.active_facts == 3 and second.current.neurons.count == first.current.neurons.count
    assert all(torch.allclose(logits(second, f), taught[i], atol=1e-5) for i, f in enumerate(FACTS))
    edit = store.active_edits(second.checkpoint_id)[0]
    assert edit.parameter.endswith("mlp.gated") and edit.hyperparams["gate"] == 0.99
    last = store.active_edits(second.checkpoint_id)[-1]  # recorded with the solve that is live now
    factors, neurons = store.load_factors(last.id), first.current.neurons
    at = first.current.gated.rows_of(last.id)
    assert torch.equal(factors["left"], neurons.values[at].T) and torch.equal(factors["right"], neurons.keys[at])
    report = fact_report(store, learned[0].fact_id, k=2)
    assert report["edits"] and report["edits"][0]["parameter"].endswith("mlp.gated")
    second.undo(learned[1].fact_id)
    never = LedgerEditor(other_store, fresh("qwen2", tokenizer), config)  # a ledger that never had fact 1
    for f in (FACTS[0], FACTS[2]):
        never.learn(f)
    assert all(torch.equal(logits(second, f), logits(never, f)) for f in FACTS)
    second.redo(learned[1].fact_id)
    assert torch.allclose(logits(second, FACTS[1]), taught[1], atol=1e-5)
    assert store.verify().ok


def test_the_cli_learns_with_a_gate_and_export_says_how_to_export_such_facts(tiny_model_dir, tmp_path):
    import json

    from click.testing import CliRunner

    import cli

    model = ["--model", str(tiny_model_dir), "--dtype", "float32"]
    out = CliRunner().invoke(cli.main, ["learn", *model, "--gate", "0.9", "--fact", "Qi started Oxinnovate.",
                                        "--query", "Who founded Oxinnovate?", "--answer", "Qi", "--json"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    solver = json.loads(out.stdout)["solver"]
    assert solver["gate"] == 0.9 and solver["row_gain"] == 4.0  # the default's row gains, as decided at the last layer
    refused = CliRunner().invoke(cli.main, ["export", *model, "--out", str(tmp_path / "hf")])  # gated by default
    assert refused.exit_code == 1 and "gated neurons" in refused.output and not (tmp_path / "hf").exists()
    assert "qf export --gate 0" in " ".join(refused.output.split())
    linear = CliRunner().invoke(cli.main, ["export", *model, "--gate", "0", "--preserve", "0", "--out", str(tmp_path / "peft"),
                                           "--format", "peft", "--json"])  # the same fact, re-solved as a dW
    assert linear.exit_code == 0, linear.output
    assert json.loads(linear.stdout)["active_facts"] == 1


def test_prepare_says_gated_neurons_need_no_keys(tiny_qwen):
    assert QFEditor(tiny_qwen, EditorConfig(gate=0.85)).prepare_keys().startswith("gated neurons (--gate) need no keys")
