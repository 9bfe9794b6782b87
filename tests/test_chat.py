"""The chat loop through click's CliRunner on a tiny random model with a scripted extractor."""

import json

import pytest
import torch
from click.testing import CliRunner

import cli
from memory.consolidate import QFEditor

CEO = {"facts": [{"statement": "Qi is the CEO of Oxinnovate.", "question": "Who is the CEO of Oxinnovate?"}]}
NONE = {"facts": []}


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_qwen):
    model_dir = tmp_path / "tiny-model"
    tiny_qwen.model.save_pretrained(model_dir)
    tiny_qwen.tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("QF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QF_DB_URL", raising=False)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    # A random model rarely ends its answer; stand in for the instructed model's own answer.
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "The CEO of Oxinnovate is Qi.")
    return model_dir


def run_chat(env, monkeypatch, lines, replies, *extra):
    monkeypatch.setenv("QF_FAKE_EXTRACTOR", json.dumps([json.dumps(r) for r in replies]))
    args = ["chat", "--model", str(env), "--dtype", "float32", "--layer", "3", "--extractor", "fake_extractor:make", *extra]
    result = CliRunner().invoke(cli.main, args, input="".join(line + "\n" for line in lines))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def store():
    from agent.session import open_store

    return open_store()


def test_fact_detected_confirmed_learned_and_recorded(env, monkeypatch):
    out = run_chat(env, monkeypatch, ["Qi is the CEO of Oxinnovate.", "y", "/quit"], [CEO])
    assert "New fact:" in out and "Who is the CEO of Oxinnovate?" in out and "learned #1" in out
    facts = store().facts()
    assert [(f.status, f.answer) for f in facts] == [("consolidated", "The CEO of Oxinnovate is Qi.")]
    assert facts[0].source["session"] == 1


def test_rejection_writes_only_a_rejected_row(env, monkeypatch):
    out = run_chat(env, monkeypatch, ["Qi is the CEO of Oxinnovate.", "n", "/quit"], [CEO])
    assert "not learned" in out
    s = store()
    assert [f.status for f in s.facts()] == ["rejected"]
    assert s.head() is not None and s.edits_of_fact(s.facts()[0].id) == []


def test_edit_changes_the_triple(env, monkeypatch):
    lines = ["Qi is the CEO of Oxinnovate.", "e", "", "Who runs Oxinnovate?", "Qi runs Oxinnovate.", "y", "/quit"]
    run_chat(env, monkeypatch, lines, [CEO])
    (fact,) = store().facts()
    assert (fact.query, fact.answer, fact.status) == ("Who runs Oxinnovate?", "Qi runs Oxinnovate.", "consolidated")


def test_questions_and_commands_are_not_facts_and_get_replies(env, monkeypatch):
    out = run_chat(env, monkeypatch, ["Who is the CEO of Oxinnovate?", "", "/help", "/facts", "/quit"], [NONE])
    assert "qf> " in out and "/remember TEXT" in out and "no facts yet" in out
    s = store()
    assert s.facts() == [] and [m["role"] for m in s.messages(1)] == ["user", "assistant"]


def test_forget_and_a_resumed_session_sees_earlier_facts(env, monkeypatch):
    run_chat(env, monkeypatch, ["Qi is the CEO of Oxinnovate.", "y", "/quit"], [CEO])
    out = run_chat(env, monkeypatch, ["/facts", "/forget 1", "/quit"], [NONE], "--session", "1")
    assert "1 fact(s) active" in out and "(resumed)" in out and "forgot #1" in out
    assert store().fact(1).status == "reverted"


def test_forget_restores_the_weights_exactly(tmp_path, tiny_qwen, monkeypatch):
    from agent.chat import Chat, ChatIO
    from agent.extract import ChatModelExtractor
    from agent.ledger_editor import LedgerEditor
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from memory.consolidate import EditorConfig
    from store import Store

    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "The CEO of Oxinnovate is Qi.")
    s = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "t")
    ledger = LedgerEditor(s, tiny_qwen, EditorConfig(layer=3))
    before = ledger.loaded.model.get_parameter(ledger.current.parameter).detach().clone()
    lines = iter(["Qi is the CEO of Oxinnovate.", "y", "/undo", "/quit"])
    out = []
    chat = Chat(ledger, ChatModelExtractor(FakeListChatModel(responses=[json.dumps(CEO)])),
                ChatIO(lambda prompt: next(lines), out.append), s.create_session())
    chat.run()
    text = "".join(out)
    assert "learned #1" in text and "forgot #1" in text
    assert torch.equal(ledger.loaded.model.get_parameter(ledger.current.parameter), before)
