"""QF2 through the editor and the ledger on tiny QFt-converted models (block installed by hand)."""

from dataclasses import replace

import pytest
import torch

from agent.ledger_editor import LedgerEditor
from memory.consolidate import EditorConfig
from memory.fact import Fact
from memory.qf2 import qf2_factors
from memory.qf2_block import install
from memory.qf2_editor import NotConvertedError, QF2Editor

CONVERTED, BETA = 2, 10.0
FACTS = [
    Fact("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi."),
    Fact("Oxinnovate has one people.", "How many people in Oxinnovate?", "One."),
]


def converted(tokenizer, seed=0):
    from conftest import loaded

    model = loaded("qwen2", tokenizer, seed=seed)
    install(model.model, CONVERTED, BETA, alpha=0.0)
    model.name = f"tiny-qf2-{seed}"
    return model


def up_weight(holder):
    """The edited up_proj weight of a QF2Editor or of a LedgerEditor's QF2 editor."""
    editor = holder.qf2 if isinstance(holder, LedgerEditor) else holder
    return editor.model.get_parameter(editor.parameter).detach().clone()


def test_qf2_is_refused_on_an_unconverted_model_with_how_to_convert(tiny_qwen, store):
    with pytest.raises(NotConvertedError, match="qf convert"):
        QF2Editor(tiny_qwen)
    ledger = LedgerEditor(store, tiny_qwen, EditorConfig(layer=3))
    with pytest.raises(NotConvertedError, match="qf convert"):
        ledger.learn(FACTS[0], method="qf2")
    assert store.facts() == []


def test_the_written_delta_is_the_formula_on_the_captured_rows(tokenizer):
    from memory.prompts import answer_ids

    editor = QF2Editor(converted(tokenizer), EditorConfig(lr=1e-3, qf2_rule="paper"))
    before = up_weight(editor)
    n = len(answer_ids(tokenizer, "One."))
    fact = Fact(FACTS[1].instruction, FACTS[1].query, "One.", significance=(1.0,) * (n - 1) + (20.0,))
    rows = editor.capture(fact)
    assert rows.significance.tolist() == [1.0] * (n - 1) + [20.0, 1.0]  # the end of turn gets 1
    result = editor.learn(fact)
    left, right = qf2_factors(rows.x, rows.y_star, rows.significance, 1e-3)
    expected = (before.double() + left @ right).float()
    assert result.rows == rows.num_rows and torch.allclose(up_weight(editor), expected, atol=1e-6)


@pytest.mark.parametrize("rule", ["paper", "solve"])  # stacked, and joint (the default)
def test_learn_record_reload_undo_bit_exact_and_redo(store, tokenizer, rule):
    ledger = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule=rule))
    base = up_weight(ledger)
    learned = [ledger.learn(f, method="qf2") for f in FACTS]
    edits = store.edits_of_fact(learned[0].fact_id)
    assert [(e.method, e.layer, e.parameter) for e in edits] == [("qf2", CONVERTED, ledger.qf2.parameter)]
    assert edits[0].hyperparams["beta"] == BETA and edits[0].rank == learned[0].result.rows
    with_both = up_weight(ledger)
    assert not torch.equal(with_both, base)
    again = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule=rule))  # the next process
    assert again.active_facts == 2 and torch.allclose(up_weight(again), with_both, atol=1e-6)
    ledger.undo(learned[1].fact_id)
    ledger.undo(learned[0].fact_id)
    assert torch.equal(up_weight(ledger), base)  # nothing active: W0, bit for bit
    ledger.redo(learned[0].fact_id)
    ledger.redo(learned[1].fact_id)
    assert torch.allclose(up_weight(ledger), with_both, atol=1e-6)


def test_replay_of_qf2_facts_onto_another_converted_checkpoint(store, tokenizer):
    from agent.replay import ReplayRefused, replay

    source = LedgerEditor(store, converted(tokenizer), EditorConfig())
    source.learn(FACTS[0], method="qf2")
    target = LedgerEditor(store, converted(tokenizer, seed=1), EditorConfig())
    assert target.checkpoint_id != source.checkpoint_id
    (done,) = replay(target)
    assert (done.status, done.layer) == ("replayed", CONVERTED) and target.active_facts == 1
    assert [e.method for e in store.edits_of_fact(done.fact_id)] == ["qf2", "qf2"]
    from conftest import loaded

    stock = LedgerEditor(store, loaded("qwen2", tokenizer, seed=2), EditorConfig(layer=3))
    with pytest.raises(ReplayRefused, match="not converted"):
        replay(stock)


def test_both_paper_protocols_run_all_steps_and_leave_the_weights_as_they_were(tokenizer):
    from bench.paper import QF2_PROTOCOL, QF_PROTOCOL, run_paper_protocol
    from memory.consolidate import QFEditor

    model = converted(tokenizer)
    qf2 = QF2Editor(model, EditorConfig(verify_tokens=4, max_answer_tokens=4))
    qf = QFEditor(model, EditorConfig(layer=3, verify_tokens=4, max_answer_tokens=4))
    before = (up_weight(qf2), model.model.get_parameter(qf.parameter).detach().clone())
    for editor, protocol in ((qf2, QF2_PROTOCOL), (qf, QF_PROTOCOL)):
        # Given answers: a random model rarely finishes its own answer.
        fixed = replace(protocol, first=replace(protocol.first, answer="Qi."), second=replace(protocol.second, answer="One."))
        steps = run_paper_protocol(editor, fixed)
        assert [s.step for s in steps] == list(range(1, 9)) and all(isinstance(s.passed, bool) for s in steps)
        assert [s.written for s in steps] == [""] * 3 + ["Qi."] * 3 + ["One.", "Qi."]  # what each step's fact wrote
    assert torch.equal(up_weight(qf2), before[0])
    assert torch.equal(model.model.get_parameter(qf.parameter), before[1])


def test_a_fact_the_model_cannot_be_taught_fails_its_steps_and_the_protocol_goes_on(tokenizer):
    from bench.paper import QF2_PROTOCOL, run_paper_protocol

    model = converted(tokenizer)
    editor = QF2Editor(model, EditorConfig(verify_tokens=4, max_answer_tokens=4))
    before = up_weight(editor)
    # The first fact has an answer; the second must be generated and a random model never ends it.
    protocol = replace(QF2_PROTOCOL, first=replace(QF2_PROTOCOL.first, answer="Qi."))
    steps = run_paper_protocol(editor, protocol)
    assert [s.step for s in steps] == list(range(1, 9))
    assert not steps[6].passed and "not learned" in steps[6].answer  # step 7: the second fact
    assert all("not learned" not in s.answer for s in steps[:6] + steps[7:])
    assert torch.equal(up_weight(editor), before)  # the first fact was learned, then removed


# --- the delta rule (an option, not the paper's) -----------------------------------------------
def test_the_delta_rule_is_the_formula_and_moves_only_disagreeing_units(store, tokenizer):
    from memory.qf2 import firing

    ledger = LedgerEditor(store, converted(tokenizer), EditorConfig(lr=1e-3, qf2_rule="delta"))
    editor = ledger.qf2
    before = up_weight(ledger)
    rows = editor.capture(FACTS[0])
    up = editor.model.get_submodule(editor.up_name)
    with torch.no_grad():
        assert torch.equal(rows.y_plain, firing(up(rows.x.to(up.weight.dtype)).float(), editor.block.beta).cpu())
    learned = ledger.learn(FACTS[0], method="qf2")
    left, right = qf2_factors(rows.x, rows.y_star, rows.significance, 1e-3, rows.y_plain)
    change = up_weight(ledger).double() - before.double()
    assert torch.allclose(change, left @ right, atol=1e-6)
    # Units on the same side in both passes at every row barely move (beta 10 here, so y* - y is
    # small, not 0); the paper's rule moves them by lr s (y* - 0.5) x, a half-unit push each.
    agree = (rows.y_plain.round() == rows.y_star.round()).all(0)
    assert bool(agree.any()) and not bool(agree.all())
    paper_left, _ = qf2_factors(rows.x, rows.y_star, rows.significance, 1e-3)
    paper = paper_left @ right
    assert change[agree].norm() < 0.5 * paper[agree].norm()
    (edit,) = store.edits_of_fact(learned.fact_id)
    assert edit.hyperparams["rule"] == "delta"
    with pytest.raises(ValueError, match="plain"):
        qf2_factors(rows.x, rows.y_star, rows.significance, 1e-3, rows.y_plain[:1])
    with pytest.raises(ValueError, match="QF2 rule"):
        LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="hebb"))


# --- the solved rule (an option, not the paper's) ----------------------------------------------
def base_firings(editor, rows):
    """The plain and instructed pre-activations of ``rows`` at W0, and the units whose firing differs."""
    from memory.qf2 import SOLVE_TOLERANCE, firing

    W0 = editor.W0.double()
    z, z_star = rows.x.double() @ W0.T, rows.x_star.double() @ W0.T
    return z, z_star, (firing(z_star, BETA) - firing(z, BETA)).abs() > SOLVE_TOLERANCE


def plain_pre_activations(editor, rows):
    up = editor.model.get_submodule(editor.up_name)
    with torch.no_grad():
        return up(rows.x.to(up.weight.dtype)).double()


def test_the_solved_rule_makes_the_plain_pass_fire_as_the_instructed_one_and_undoes_exactly(store, tokenizer):
    from memory.qf import qf_solve
    from memory.qf2 import SOLVE_TOLERANCE, firing, qf2_change

    ledger = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="solve"))
    editor = ledger.qf2
    before = up_weight(ledger)
    rows = editor.capture(FACTS[0])
    assert rows.x_star.shape == rows.x.shape and rows.y_plain is None
    z, z_star, differs = base_firings(editor, rows)
    assert bool(differs.any()) and not bool(differs.all())
    learned = ledger.learn(FACTS[0], method="qf2")
    # one fact: QF's minimum-norm solve of dW x_t = qf2_change(z, z*)_t alone
    left, right = qf_solve(qf2_change(z, z_star, BETA).T, rows.x.double().T, rows.significance)
    assert torch.allclose(up_weight(ledger).double() - before.double(), left @ right, atol=1e-6)
    z_after = plain_pre_activations(editor, rows)
    scale = float(z_star.abs().max())
    # units that fired differently now get the instructed pre-activation; the others kept theirs
    assert torch.allclose(z_after[differs], z_star[differs], atol=1e-4 * scale)
    assert torch.allclose(z_after[~differs], z[~differs], atol=1e-4 * scale)
    assert float((firing(z_after, BETA) - firing(z_star, BETA)).abs().max()) < 2 * SOLVE_TOLERANCE
    (edit,) = store.edits_of_fact(learned.fact_id)
    assert edit.hyperparams["rule"] == "solve" and "lr" not in edit.hyperparams  # the solve has no rate
    ledger.undo(learned.fact_id)
    assert torch.equal(up_weight(ledger), before)
    with pytest.raises(ValueError, match="pre-activations"):
        qf2_change(z[:1], z_star, BETA)


def test_solved_facts_are_solved_jointly_so_a_second_fact_keeps_the_first_in_place(store, tokenizer):
    ledger = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="solve"))
    editor = ledger.qf2
    base = up_weight(ledger)
    rows = [editor.capture(f) for f in FACTS]
    learned = [ledger.learn(f, method="qf2") for f in FACTS]
    for r in rows:  # both facts' rows are met at once (a stacked second step would move the first's)
        z, z_star, differs = base_firings(editor, r)
        z_after = plain_pre_activations(editor, r)
        scale = float(z_star.abs().max())
        assert torch.allclose(z_after[differs], z_star[differs], atol=1e-4 * scale)
        assert torch.allclose(z_after[~differs], z[~differs], atol=1e-4 * scale)
    both = up_weight(ledger)
    again = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="solve"))  # rebuilt from the captures
    assert len(again.qf2.joint) == 2 and torch.allclose(up_weight(again), both, atol=1e-6)
    # undo of the first is the solve that never saw it: the second fact alone
    ledger.undo(learned[0].fact_id)
    alone = QF2Editor(converted(tokenizer), EditorConfig(qf2_rule="solve"))
    alone.learn(FACTS[1], verify=False)
    assert torch.allclose(up_weight(ledger), up_weight(alone), atol=1e-6)
    ledger.undo(learned[1].fact_id)
    assert torch.equal(up_weight(ledger), base)


def test_a_solved_edit_recorded_before_the_joint_solve_is_held_by_its_factors(store, tokenizer, monkeypatch):
    import agent.ledger_editor as module

    recorded = module.qf2_rows_to_tensors  # what such an edit holds: its captures had no instructed inputs
    monkeypatch.setattr(module, "qf2_rows_to_tensors", lambda rows: {k: v for k, v in recorded(rows).items() if k != "x_star"})
    ledger = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="solve"))
    learned = ledger.learn(FACTS[0], method="qf2")
    (edit,) = store.edits_of_fact(learned.fact_id)
    with_fact = up_weight(ledger)
    again = LedgerEditor(store, converted(tokenizer), EditorConfig(qf2_rule="solve"))
    assert again.qf2.keys == {edit.id} and len(again.qf2.joint) == 0
    assert torch.allclose(up_weight(again), with_fact, atol=1e-6)
    again.undo(learned.fact_id)
    assert again.active_facts == 0 and torch.equal(up_weight(again), ledger.qf2.W0)


@pytest.mark.parametrize("method", ["qf2", "qf"])
def test_the_models_own_answer_is_written_as_the_tokens_it_emitted(tokenizer, monkeypatch, method):
    from memory.consolidate import QFEditor
    from memory.generate import Answer
    from memory.prompts import answer_ids, end_of_turn_id

    model = converted(tokenizer)
    editor = QF2Editor(model, EditorConfig(qf2_rule="solve")) if method == "qf2" else QFEditor(model, EditorConfig(layer=3))
    emitted = tuple(answer_ids(tokenizer, "Q") + answer_ids(tokenizer, "i is the CEO."))
    assert emitted != tuple(answer_ids(tokenizer, "Qi is the CEO."))  # not the text's own tokenization
    end = end_of_turn_id(tokenizer)
    monkeypatch.setattr(editor, "ask", lambda *a, **k: Answer("Qi is the CEO.", emitted + (end,), True))
    rows = editor.capture(Fact(FACTS[0].instruction, FACTS[0].query))  # no answer given: the model's own
    assert rows.answer == "Qi is the CEO." and rows.targets == emitted + (end,)
    given = editor.capture(Fact(FACTS[0].instruction, FACTS[0].query, "Qi is the CEO of Oxinnovate."))
    assert given.targets == tuple(answer_ids(tokenizer, "Qi is the CEO of Oxinnovate.")) + (end,)


def test_the_command_lines_offer_exactly_the_library_qf2_rules():
    from click.testing import CliRunner

    import cli
    from memory.qf2 import QF2_RULES

    for args in (["learn", "--help"], ["bench", "paper", "--help"], ["chat", "--help"]):
        text = " ".join(CliRunner().invoke(cli.main, args).output.split())
        assert f"[{'|'.join(QF2_RULES)}]" in text
        assert f"{EditorConfig().qf2_rule} = the minimum-norm" in text and "(no lr; the default" in text


def test_qf_only_solver_options_are_refused_with_qf2_before_anything_loads(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    args = ["learn", "--method", "qf2", "--model", str(tmp_path / "no-such-model"), "--fact", "Qi started Oxinnovate.",
            "--query", "Who founded Oxinnovate?"]
    refused = CliRunner().invoke(cli.main, args + ["--anchors", "3", "--gain", "2"])
    assert refused.exit_code == 2, refused.output
    assert "--gain, --anchors only apply to --method qf" in " ".join(refused.output.split())
    assert not (tmp_path / "qf.db").exists()  # refused before the ledger opens
    monkeypatch.setenv("QF_GAIN", "2")  # an environment default is not a request: it gets past the check
    reached = CliRunner().invoke(cli.main, args)
    assert reached.exit_code != 2 and "only apply to --method qf" not in reached.output


def test_the_protocols_checks_accept_any_expected_form_as_a_whole_word():
    from bench.paper import QF2_PROTOCOL, mentions

    assert mentions("Oxinnovate has 1 person.", QF2_PROTOCOL.second_expected)
    assert mentions("It has one employee.", QF2_PROTOCOL.second_expected)
    assert not mentions("Oxinnovate has 10 people.", QF2_PROTOCOL.second_expected)
    assert not mentions("Someone runs it.", QF2_PROTOCOL.second_expected)
    assert mentions("Qi is the CEO.", "Qi") and not mentions("Qingdao.", "Qi")


def test_the_solved_rule_asks_for_the_models_own_answer_at_the_base_weights(tokenizer, monkeypatch):
    from memory.generate import Answer

    editor = QF2Editor(converted(tokenizer), EditorConfig(qf2_rule="solve"))
    editor.learn(FACTS[0], verify=False)
    live = up_weight(editor)
    assert not torch.equal(live, editor.W0)
    seen = []
    monkeypatch.setattr(editor, "ask", lambda *a, **k: seen.append(up_weight(editor)) or Answer("One.", (1, 2), True))
    assert editor.instructed_answer(Fact(FACTS[1].instruction, FACTS[1].query)) == "One."
    assert torch.equal(seen[0], editor.W0)  # the joint solve's targets are W0's: so is the answer
    assert torch.equal(up_weight(editor), live)  # and the live weight is back
    stacked = QF2Editor(converted(tokenizer), EditorConfig(qf2_rule="paper", lr=1e-3))
    stacked.learn(FACTS[0], verify=False)
    monkeypatch.setattr(stacked, "ask", lambda *a, **k: seen.append(up_weight(stacked)) or Answer("One.", (1, 2), True))
    stacked.instructed_answer(Fact(FACTS[1].instruction, FACTS[1].query))
    assert torch.equal(seen[1], up_weight(stacked))  # a stacked rule's y* is at the live weights: so is its answer
