"""Anchor rows (memory.anchors): the fact's query asked of other subjects, held unchanged."""

import pytest
import torch

from memory.anchors import CONTRAST_SUBJECTS, contrast_queries, contrast_subjects, guess_subject
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact, FactRows, with_anchors
from memory.joint import JointQF
from memory.prompts import build_pass, render_prompt

N, D = 12, 40


def test_contrast_queries_swap_the_subject_for_others_deterministically():
    query = "Who is the CEO of Oxinnovate?"
    first = contrast_queries(query, "Oxinnovate", 3)
    assert first == contrast_queries(query, "Oxinnovate", 3)  # the same fact, the same anchors
    assert len(set(first)) == 3 and all(q.startswith("Who is the CEO of ") and "Oxinnovate" not in q for q in first)
    assert contrast_queries(query, "Oxinnovate", 5)[:3] == first  # more anchors extend, not reshuffle
    assert contrast_queries(query, None, 3) == () and contrast_queries(query, "Apple", 3) == ()
    assert contrast_queries(query, "Oxinnovate", 0) == ()
    # a subject of the list is never its own contrast, nor one the query already names
    others = contrast_subjects("Did Paris host Toyota?", "Paris", len(CONTRAST_SUBJECTS))
    assert "Paris" not in others and "Toyota" not in others and len(others) == len(CONTRAST_SUBJECTS) - 2
    with pytest.raises(ValueError):
        contrast_subjects(query, "Oxinnovate", -1)


@pytest.mark.parametrize("instruction, query, subject", [
    ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "Oxinnovate"),  # a title is not the subject
    ("The University of Oxford was founded in 1096.", "When was the University of Oxford founded?", "University of Oxford"),
    ("Apple makes the iPhone 15.", "Which company makes the iPhone 15?", "iPhone 15"),
    ("Toko Yasuda plays the piano.", "What does Toko Yasuda play?", "Toko Yasuda"),
    ("My daughter's name is Lena.", "What is my daughter's name?", "my daughter"),  # what the user owns
    ("My daughter is called Lena.", "What is My daughter called?", "My daughter"),  # as the query writes it
    ("My favourite colour is green.", "What is my favourite colour?", "my favourite colour"),
    ("Our office moved to Berlin.", "Where is our office?", "our office"),
    ("My son is Tom.", "What is my daughter's name?", None),  # owned, but not what the fact is about
    ("The stand-up meeting was moved to 9:30.", "When is the stand-up?", None),
    ("Qi started Oxinnovate.", "Who founded Apple?", None),  # a name the fact does not name is not its subject
])
def test_the_subject_is_guessed_from_the_names_the_fact_and_query_share(instruction, query, subject):
    assert guess_subject(instruction, query) == subject


def test_a_fact_s_subject_must_occur_in_its_query():
    assert Fact("Qi runs Oxinnovate.", "Who runs Oxinnovate?", subject=" Oxinnovate ").subject == "Oxinnovate"
    assert Fact("Qi runs Oxinnovate.", "Who runs Oxinnovate?", subject="  ").subject is None
    with pytest.raises(ValueError, match="does not occur"):
        Fact("Qi runs Oxinnovate.", "Who runs Oxinnovate?", subject="Apple")


def random_rows(T, A=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    rows = FactRows("a", tuple(range(T)), r(T, D), r(T, N), r(T, D), r(T, N), torch.ones(T, dtype=torch.float64))
    return with_anchors(rows, r(A, D), r(A, N)) if A else rows


def test_anchored_solve_meets_the_fact_and_leaves_the_anchors_unchanged():
    W0 = torch.randn(N, D)
    rows = random_rows(3, A=4)
    assert rows.num_rows == 7 and rows.anchors == 4 and rows.query_significance.shape == (3,)
    joint = JointQF(W0, "w")
    joint.add("f", rows)
    dW = joint.solve().dense().double()
    anchors = rows.U_plain[3:].double().T
    assert (dW @ anchors).abs().max() < 1e-6 * dW.abs().max()  # dW k = 0 at every anchor
    plain = JointQF(W0, "w")
    plain.add("f", FactRows("a", rows.targets[:3], rows.U[:3], rows.V[:3], rows.U_plain[:3], rows.V_plain[:3],
                            rows.significance[:3]))
    R = plain.solve().dense().double() @ rows.U_plain[:3].double().T  # the fact's rows, as without anchors
    assert torch.allclose(dW @ rows.U_plain[:3].double().T, R, atol=1e-6 * float(R.abs().max()))
    assert (plain.solve().dense().double() @ anchors).abs().max() > 1e-3  # without them the anchors move
    joint.remove("f")
    assert joint.solve().rank == 0  # undo drops the anchors with the fact


def test_anchors_are_refused_twice_and_with_focus(tiny_qwen):
    with pytest.raises(ValueError, match="do not combine"):
        QFEditor(tiny_qwen, EditorConfig(focus=4, anchors=2, preserve=0.0))
    rows = random_rows(2, A=1)
    with pytest.raises(ValueError):
        with_anchors(rows, torch.zeros(1, D), torch.zeros(1, N))
    focused = random_rows(2)
    focused.focus = torch.zeros(2, N, 1)
    with pytest.raises(ValueError, match="focus"):
        with_anchors(focused, torch.zeros(1, D), torch.zeros(1, N))


def test_editor_captures_each_anchor_at_its_last_prompt_token(tiny_qwen):
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate")
    editor = QFEditor(tiny_qwen, EditorConfig(layer=2, anchors=3, preserve=0.0, gate=0.0))
    rows = editor.capture(fact)
    assert rows.anchors == 3 and rows.targets[-3:] == (-1, -1, -1)
    plain = QFEditor(tiny_qwen, EditorConfig(layer=2, preserve=0.0, gate=0.0)).capture(fact)
    T = plain.num_rows
    assert torch.equal(rows.U[:T], plain.U) and torch.equal(rows.U_plain[:T], plain.U_plain)
    assert torch.equal(rows.U[T:], rows.U_plain[T:]) and torch.equal(rows.V[T:], rows.V_plain[T:])
    # the packed capture equals each anchor's own pass at its last prompt token
    for i, query in enumerate(contrast_queries(fact.query, fact.subject, 3)):
        p = build_pass(tiny_qwen.tokenizer, query, "Qi")
        U, V, _ = editor.capture_pass(p)
        assert p.prompt_len == len(render_prompt(tiny_qwen.tokenizer, query))
        assert torch.allclose(rows.U_plain[T + i], U[0], atol=1e-5) and torch.allclose(rows.V_plain[T + i], V[0], atol=1e-5)
    editor.learn(fact, verify=False)  # and the anchored fact solves and writes
    W = tiny_qwen.model.get_parameter(editor.parameter).detach().double()
    dW = W - editor.joint.W0.double()
    assert (dW @ rows.U_plain[T:].double().T).abs().max() < 1e-4 * (dW @ rows.U_plain[:T].double().T).abs().max()


def test_a_fact_without_a_subject_gets_no_anchors(tiny_qwen):
    rows = QFEditor(tiny_qwen, EditorConfig(layer=2, anchors=3, preserve=0.0)).capture(
        Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi"))
    assert rows.anchors == 0


def test_the_ledger_records_the_subject_and_the_anchor_rows(tokenizer, tmp_path):
    """(Rebuild and exact undo with anchors: tests/test_solver_options.py, the ledger test.)"""
    from agent.ledger_editor import LedgerEditor
    from conftest import loaded
    from store import Store

    store = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate")
    ledger = LedgerEditor(store, loaded("qwen2", tokenizer), EditorConfig(layer=3, anchors=2, preserve=0.0, verify_tokens=2))
    learned = ledger.learn(fact)
    (edit,) = store.edits_of_fact(learned.fact_id)
    assert store.fact(learned.fact_id).subject == "Oxinnovate" and edit.hyperparams["anchors"] == 2
    unanchored = QFEditor(loaded("qwen2", tokenizer), EditorConfig(layer=3, preserve=0.0)).capture(fact).num_rows
    assert learned.result.rows == edit.hyperparams["rows"] == unanchored + 2
    store.close()


def test_cli_learns_with_a_subject_and_anchors(tiny_model_dir):
    import json

    from click.testing import CliRunner

    import cli

    args = ["learn", "--model", str(tiny_model_dir), "--dtype", "float32", "--layer", "3", "--fact",
            "Qi started Oxinnovate.", "--query", "Who founded Oxinnovate?", "--answer", "Qi", "--json"]
    out = CliRunner().invoke(cli.main, args + ["--subject", "Oxinnovate", "--anchors", "3"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    data = json.loads(out.stdout)
    assert data["subject"] == "Oxinnovate" and data["solver"]["anchors"] == 3
    without = json.loads(CliRunner().invoke(cli.main, args + ["--subject", "", "--anchors", "3"]).stdout)
    assert data["rows"] == without["rows"] + 3 and without["subject"] is None
    guessed = json.loads(CliRunner().invoke(cli.main, args + ["--anchors", "3"]).stdout)
    assert guessed["subject"] == "Oxinnovate" and guessed["rows"] == data["rows"]  # the name the fact and query share
    shown = CliRunner().invoke(cli.main, ["facts", "show", str(data["fact_id"])])
    assert "subject:      Oxinnovate" in shown.output
    bad = CliRunner().invoke(cli.main, args + ["--subject", "Apple"])
    assert bad.exit_code != 0 and "does not occur in its query" in bad.output
