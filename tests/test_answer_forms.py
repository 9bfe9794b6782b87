"""Answer forms (issue 7, item 3): a given bare answer and the instructed model's own sentence, written together."""

import pytest
import torch

from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact, FactRows, with_anchors, with_forms

N, D = 12, 40


def rows(targets, seed=0, weights=None):
    g = torch.Generator().manual_seed(seed)
    T = len(targets)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    significance = torch.ones(T, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    return FactRows("Qi", tuple(targets), r(T, D), r(T, N), r(T, D), r(T, N), significance)


def test_other_forms_follow_the_fact_s_rows_and_keep_its_weights():
    given, sentence = rows((7, 2), weights=(0.0, 1.0)), rows((5, 6, 7, 8, 2), seed=1)
    both = with_forms(given, [sentence])
    assert both.num_rows == 7 and both.form_rows == 5 and both.targets == (7, 2, 5, 6, 7, 8, 2)
    assert both.query_significance.tolist() == [0.0, 1.0]  # the given answer's weights, as the ledger records them
    assert torch.equal(both.U_plain[2:], sentence.U_plain) and both.answer == "Qi"
    anchored = with_anchors(both, torch.randn(3, D), torch.randn(3, N))
    assert both.forms == ("Qi",) and anchored.forms == ("Qi",)  # the other forms' text, kept for the record
    assert anchored.form_rows == 5 and anchored.anchors == 3 and anchored.query_significance.tolist() == [0.0, 1.0]
    assert with_forms(given, []) is given
    with pytest.raises(ValueError, match="before the anchors"):
        with_forms(anchored, [sentence])


def test_the_editor_writes_the_model_s_own_sentence_beside_a_bare_answer(tiny_qwen, monkeypatch):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3, answer_forms=True, preserve=0.0, gate=0.0, gain=1.0, max_answer_tokens=4))
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")
    own = "The founder of Oxinnovate is Qi."
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, f: own)
    bare = QFEditor(tiny_qwen, EditorConfig(layer=3, preserve=0.0, gate=0.0)).capture(fact)
    both = editor.capture(fact)
    sentence = editor._question_rows(fact, own, None)
    assert both.form_rows == sentence.num_rows and both.num_rows == bare.num_rows + sentence.num_rows
    assert both.forms == (own,) and bare.forms == ()
    assert torch.allclose(both.U_plain[:bare.num_rows], bare.U_plain) and torch.allclose(both.U_plain[bare.num_rows:], sentence.U_plain)
    editor.learn(fact, verify=False)  # both forms are met by the solve
    W = tiny_qwen.model.get_parameter(editor.parameter).detach().double()
    R = both.V.double().T - both.V_plain.double().T - editor.joint.W0.double() @ (both.U_plain - both.U).double().T
    assert (((W - editor.joint.W0.double()) @ both.U_plain.double().T) - R).abs().max() < 1e-4 * R.abs().max()


@pytest.mark.parametrize("own", ["Oxinnovate was founded by Lena.", "Qi"])
def test_no_other_form_when_the_model_s_answer_does_not_name_the_given_one_or_is_the_same(tiny_qwen, monkeypatch, own):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3, answer_forms=True, preserve=0.0))
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, f: own)
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")
    assert editor.other_forms(fact, "Qi") == [] and editor.capture(fact).form_rows == 0


def test_no_other_form_without_a_given_answer_or_when_off(tiny_qwen, monkeypatch):
    calls = []
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, f: calls.append(f) or "Qi founded it.")
    on = QFEditor(tiny_qwen, EditorConfig(layer=3, answer_forms=True, preserve=0.0))
    assert on.other_forms(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?"), "Qi founded it.") == []
    off = QFEditor(tiny_qwen, EditorConfig(layer=3, preserve=0.0))
    assert off.other_forms(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi"), "Qi") == []
    assert calls == []  # nothing generated


def test_bench_records_the_form_each_case_wrote(tiny_qwen, monkeypatch):
    from bench.datasets import parse_records
    from bench.edits import run_benchmark
    from tests.test_bench_edits import ZSRE

    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, f: f"It is {f.answer}.")
    cases = parse_records([ZSRE], "zsre")[0]
    result = run_benchmark(QFEditor(tiny_qwen, EditorConfig(max_answer_tokens=4)), cases, "chat", ("qf", "qf/forms"), gen_tokens=0)
    assert result["cases"][0]["qf/forms"]["answer_forms"] == [f"It is {cases[0].target_new}."]
    assert "answer_forms" not in result["cases"][0]["qf"]


def test_bench_forms_variant():
    from bench.edits import qf_settings

    assert qf_settings("qf/p0/forms") == {"preserve": 0.0, "answer_forms": True}


def test_the_ledger_records_the_form_it_wrote(tiny_qwen, monkeypatch, store):
    from agent.ledger_editor import LedgerEditor

    own = "The founder of Oxinnovate is Qi."
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, f: own)
    ledger = LedgerEditor(store, tiny_qwen, EditorConfig(layer=3, answer_forms=True, preserve=0.0, max_answer_tokens=4))
    ledger.learn(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi"))
    (edit,) = store.active_edits(ledger.checkpoint_id)
    assert edit.hyperparams["answer_forms_written"] == [own]
