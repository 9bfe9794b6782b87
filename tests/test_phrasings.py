"""Phrasings: other ways to ask a fact's query, captured with it, solved together, kept in the ledger."""

import json

import pytest
import torch

from memory import architecture as arch
from memory.answering import PAPER_RULE
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.phrasings import generate_phrasings, names_in, parse_phrasings
from memory.prompts import build_pass, instructed_system

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", phrasings=("Who started Oxinnovate?",
                                                                                  "The person behind Oxinnovate?"))


def test_parse_keeps_distinct_questions_without_numbering_or_the_query():
    text = ("1. Who started Oxinnovate?\n2) who STARTED oxinnovate\n- The person behind Oxinnovate?\n"
            "Who founded Oxinnovate?\nQi founded it.\nQuestion 3: Which person set up Oxinnovate?\n"
            '"Who created Oxinnovate?"')
    assert parse_phrasings(text, "Who founded Oxinnovate?", 5) == (
        "Who started Oxinnovate?", "The person behind Oxinnovate?", "Which person set up Oxinnovate?",
        "Who created Oxinnovate?")
    assert parse_phrasings(text, "Who founded Oxinnovate?", 2) == ("Who started Oxinnovate?", "The person behind Oxinnovate?")
    assert parse_phrasings("", "Who?", 3) == ()


def test_a_phrasing_that_loses_what_the_query_names_is_dropped():
    assert names_in("When was WEFS established in 1999?") == {"wefs", "1999"}
    assert names_in("Who founded Oxinnovate?") == {"oxinnovate"}
    text = "When was AWS Web Services established?\nWhen was WEFS created?"
    assert parse_phrasings(text, "When was WEFS established?", 3) == ("When was WEFS created?",)
    text = "What is your daughter's name?\nWhat do I call my daughter?\nWhat is my daughter called?"
    assert parse_phrasings(text, "What is my daughter's name?", 3) == ("What is my daughter called?",)


def test_generation_asks_once_per_style_without_the_instruction(tiny_qwen, monkeypatch):
    import memory.phrasings as phrasings

    tok, seen = tiny_qwen.tokenizer, {}
    replies = ["Who started Oxinnovate?\nIt was Qi.", "Who founded Oxinnovate?", "Who set up Oxinnovate?"]

    def fake_batch(model, prompts, stops, max_new_tokens, pad_id):
        seen["prompts"] = [tok.decode(p) for p in prompts]
        return [tuple(tok(r, add_special_tokens=False).input_ids) for r in replies[:len(prompts)]]

    monkeypatch.setattr(phrasings, "greedy_batch", fake_batch)
    out = generate_phrasings(tiny_qwen.model, tok, "Who founded Oxinnovate?", 3)
    assert out == ("Who started Oxinnovate?", "Who set up Oxinnovate?")  # the query itself is not a phrasing
    assert len(seen["prompts"]) == 3 and all("Who founded Oxinnovate?" in p for p in seen["prompts"])
    assert len({p for p in seen["prompts"]}) == 3  # one style each
    assert generate_phrasings(tiny_qwen.model, tok, "Who?", 0) == ()
    # The real model runs end to end (a random model's lines are rarely questions: maybe none).
    monkeypatch.undo()
    assert len(generate_phrasings(tiny_qwen.model, tok, "Who founded Oxinnovate?", 2, max_new_tokens=8)) <= 2


def test_a_fact_rejects_an_empty_phrasing_and_lists_its_questions():
    assert FACT.queries == ("Who founded Oxinnovate?", "Who started Oxinnovate?", "The person behind Oxinnovate?")
    assert Fact("a.", "b?", phrasings=["c? "]).phrasings == ("c?",)
    with pytest.raises(ValueError, match="phrasing"):
        Fact("a.", "b?", phrasings=("c?", " "))


def test_capture_stacks_one_block_per_question_and_the_first_is_the_plain_fact(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3))
    alone = editor.capture(Fact(FACT.instruction, FACT.query, FACT.answer))
    rows = editor.capture(FACT)
    T = alone.num_rows
    assert rows.num_rows == 3 * T and rows.queries == 3 and rows.targets == alone.targets * 3
    # the questions are captured in one packed forward pass: the same rows, to float rounding
    torch.testing.assert_close(rows.U[:T], alone.U, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rows.U_plain[:T], alone.U_plain, rtol=1e-4, atol=1e-5)
    assert not torch.equal(rows.U_plain[T:2 * T], alone.U_plain)  # another question, other keys
    assert torch.equal(rows.query_significance, alone.significance)


def test_the_solve_meets_every_phrasing_at_the_last_layer(tiny):
    last = arch.num_layers(tiny.model) - 1
    editor = QFEditor(tiny, EditorConfig(layer=last, **PAPER_RULE))
    tok = tiny.tokenizer

    def logits(p):
        with torch.no_grad():
            return tiny.model(input_ids=p.input_ids).logits[0, p.rows].float()

    passes = [(build_pass(tok, q, FACT.answer, instructed_system(FACT.instruction, None)), build_pass(tok, q, FACT.answer))
              for q in FACT.queries]
    targets = [logits(inst) for inst, _ in passes]
    editor.learn(FACT)
    for (_, plain), target in zip(passes, targets):
        assert (logits(plain) - target).abs().max() < 1e-3  # each phrasing's plain pass = its instructed pass


def test_ledger_keeps_the_phrasings_rebuilds_and_replays_them(tiny_model_dir, monkeypatch):
    from click.testing import CliRunner

    import cli
    from agent.session import open_store

    args = ["learn", "--model", str(tiny_model_dir), "--dtype", "float32", "--layer", "3", "--fact", FACT.instruction,
            "--query", FACT.query, "--answer", "Qi", "--json"]
    out = CliRunner().invoke(cli.main, args + [a for p in FACT.phrasings for a in ("--phrasing", p)])
    assert out.exit_code == 0, out.output + repr(out.exception)
    data = json.loads(out.stdout)
    assert data["phrasings"] == list(FACT.phrasings)
    store = open_store()
    fact = store.fact(data["fact_id"])
    assert fact.phrasings == list(FACT.phrasings)
    (edit,) = store.edits_of_fact(fact.id)
    assert edit.hyperparams["rows"] == data["rows"] == 3 * len(fact.significance)
    shown = CliRunner().invoke(cli.main, ["facts", "show", str(fact.id)]).output
    assert "also asked:   The person behind Oxinnovate?" in shown
    assert store.verify().ok


def test_replay_learns_the_stored_phrasings_on_another_checkpoint(tokenizer, tmp_path, monkeypatch):
    from agent.ledger_editor import LedgerEditor
    from agent.replay import replay
    from conftest import loaded
    from store import Store

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")
    source = LedgerEditor(store, loaded("qwen2", tokenizer), EditorConfig(layer=3))
    learned = source.learn(FACT)
    other = loaded("qwen2", tokenizer, seed=1)
    other.name = "tiny-qwen2-other"  # another checkpoint
    target = LedgerEditor(store, other, EditorConfig(layer=3))
    assert target.checkpoint_id != source.checkpoint_id
    (item,) = replay(target)
    assert item.status == "replayed", item
    rows = [e.hyperparams["rows"] for e in store.edits_of_fact(learned.fact_id)]
    assert rows[0] == rows[1] == learned.result.rows and rows[0] % 3 == 0
    store.close()


def test_qf2_captures_every_phrasing(tokenizer):
    from conftest import loaded
    from memory.qf2_block import install
    from memory.qf2_editor import QF2Editor

    tiny = loaded("qwen2", tokenizer)
    install(tiny.model, 2, beta=10.0, alpha=0.0)
    editor = QF2Editor(tiny, EditorConfig(layer=2))
    alone = editor.capture(Fact(FACT.instruction, FACT.query, FACT.answer))
    rows = editor.capture(FACT)
    T = alone.num_rows
    assert rows.num_rows == 3 * T and rows.queries == 3
    assert torch.equal(rows.x[:T], alone.x) and torch.equal(rows.y_star[:T], alone.y_star)
    assert torch.equal(rows.query_significance, alone.significance)


def test_bench_variant_with_phrasings_generates_once_and_records_them(tiny_qwen, monkeypatch):
    from bench.datasets import parse_records
    from bench.edits import qf_settings, run_benchmark
    from tests.test_bench_edits import ZSRE

    assert qf_settings("qf/q3") == {"phrasings": 3}
    calls = []
    monkeypatch.setattr(QFEditor, "phrasings_for", lambda self, q: calls.append(q) or (q.replace("Who", "Which person"),))
    cases = parse_records([ZSRE, {**ZSRE, "alt": "Lena"}], "zsre")[0]
    editor = QFEditor(tiny_qwen, EditorConfig())
    result = run_benchmark(editor, cases, "chat", ("qf", "qf/q1", "qf/q1/g1"), gen_tokens=0)
    assert len(calls) == 2  # one generation per case, shared by the two variants with phrasings
    assert result["cases"][0]["qf/q1"]["phrasings"] == ["Which person founded Oxinnovate?"]
    assert "phrasings" not in result["cases"][0]["qf"]
