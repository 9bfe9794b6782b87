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
def env(tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    # A random model rarely ends its answer; stand in for the instructed model's own answer.
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "The CEO of Oxinnovate is Qi.")
    return tiny_model_dir


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
    # the subject is asked too: the default subject gate fires the fact where it is named
    lines = ["Qi is the CEO of Oxinnovate.", "e", "", "Who runs Oxinnovate?", "Qi runs Oxinnovate.", "", "", "y", "/quit"]
    out = run_chat(env, monkeypatch, lines, [CEO])
    assert "subject:     Oxinnovate" in out and "subject (as written in the query, - for none) [Oxinnovate]" in out
    (fact,) = store().facts()
    assert (fact.query, fact.answer, fact.status, fact.subject) == ("Who runs Oxinnovate?", "Qi runs Oxinnovate.",
                                                                    "consolidated", "Oxinnovate")


def test_phrasings_are_shown_edited_stored_and_learned(env, monkeypatch):
    monkeypatch.setattr(QFEditor, "phrasings_for", lambda self, query: ("Who leads Oxinnovate?",))
    monkeypatch.setenv("QF_PHRASINGS", "1")
    lines = ["Qi is the CEO of Oxinnovate.", "e", "", "", "", "Who leads Oxinnovate? | Oxinnovate's boss?", "", "y",
             "/quit"]
    out = run_chat(env, monkeypatch, lines, [CEO])
    assert "also asked:  Who leads Oxinnovate?" in out  # the model's own, shown before the edit
    (fact,) = store().facts()
    assert fact.status == "consolidated" and fact.phrasings == ["Who leads Oxinnovate?", "Oxinnovate's boss?"]
    (edit,) = store().edits_of_fact(fact.id)
    assert edit.hyperparams["rows"] == 3 * len(fact.significance)


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


def test_a_paste_longer_than_the_context_is_not_learned_but_the_chat_goes_on(env, monkeypatch):
    paste = "Qi is the CEO of Oxinnovate and " * 200
    out = run_chat(env, monkeypatch, [paste, "/facts", "/quit"], [CEO])
    assert "too long to learn" in out and "no facts yet" in out
    assert "longer than the model's context" in out  # the reply is refused too, cleanly


def test_non_utf8_input_does_not_crash(env, monkeypatch):
    monkeypatch.setenv("QF_FAKE_EXTRACTOR", json.dumps([json.dumps(NONE)]))
    args = ["chat", "--model", str(env), "--dtype", "float32", "--layer", "3", "--extractor", "fake_extractor:make"]
    result = CliRunner().invoke(cli.main, args, input=b"hello \xff\xfe there friend\n/facts\n/quit\n")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "no facts yet" in result.output


def test_an_answer_without_the_information_is_flagged_and_can_be_edited(env, monkeypatch):
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "I am not sure.")
    lines = ["Qi is the CEO of Oxinnovate.", "e", "", "", "Qi.", "", "", "y", "/quit"]
    out = run_chat(env, monkeypatch, lines, [CEO])
    assert "does not contain what the fact says" in out and "learned #1" in out
    assert store().fact(1).answer == "Qi."


def test_a_model_that_gives_no_answer_writes_nothing(env, monkeypatch):
    from memory.consolidate import ConsolidationError

    def no_answer(self, fact):
        raise ConsolidationError("the model gave an empty answer with the instruction in context; pass an answer")

    monkeypatch.setattr(QFEditor, "instructed_answer", no_answer)
    out = run_chat(env, monkeypatch, ["Qi is the CEO of Oxinnovate.", "/facts", "/quit"], [CEO])
    assert "cannot learn that" in out and "no facts yet" in out


def test_rules_and_parser_of_the_extractor():
    from agent.extract import parse_candidates, rule_verdict

    for message in ["Who is the CEO?", "hello", "Please write a poem.", "I think so.", "/facts", "ok"]:
        assert rule_verdict(message) is False, message
    assert rule_verdict("Qi is the CEO of Oxinnovate.") is None
    assert parse_candidates("no json here") == [] and parse_candidates('{"facts": [1, {"x": 2}]}') == []
    (c,) = parse_candidates('Sure! {"facts": [{"statement": "Lena is my daughter.", "question": "Who is Lena"}]}')
    assert (c.instruction, c.query) == ("Lena is my daughter.", "Who is Lena?")


def test_langchain_model_streams_invokes_and_changes_identity_when_it_learns(tmp_path, tiny_qwen, monkeypatch):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from agent.chat_model import QFChatModel
    from agent.ledger_editor import LedgerEditor
    from memory.consolidate import EditorConfig
    from store import Store

    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "The CEO of Oxinnovate is Qi.")
    ledger = LedgerEditor(Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "t"), tiny_qwen, EditorConfig(layer=3))
    model = QFChatModel(ledger=ledger, max_new_tokens=8)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()
    q = {"q": "Who is the CEO of Oxinnovate?"}
    assert "".join(chain.stream(q)).strip() == chain.invoke(q)
    before = model._identifying_params
    learned = model.learn("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?")
    after = model._identifying_params
    assert after["ledger_head"] != before["ledger_head"] and after["active_facts"] == 1
    assert learned.fact_id == 1 and ledger.store.fact(1).source == {"via": "langchain"}
    # the streamed reply holds back a multi-byte character cut by max_new_tokens; ask decodes it as U+FFFD
    assert chain.invoke(q) == ledger.ask("Who is the CEO of Oxinnovate?", max_new_tokens=8).text.rstrip("\ufffd")


def test_a_conflicting_fact_offers_to_supersede_the_old_one(env, monkeypatch):
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: f"The CEO is {fact.instruction.split()[0]}.")
    lena = {"facts": [{"statement": "Lena is the CEO of Oxinnovate.", "question": "Who is the CEO of Oxinnovate?"}]}
    lines = ["Qi is the CEO of Oxinnovate.", "y", "Lena is the CEO of Oxinnovate now.", "y", "/quit"]
    out = run_chat(env, monkeypatch, lines, [CEO, lena])
    assert "this replaces #1: Qi is the CEO of Oxinnovate. (A: The CEO is Qi.)" in out and "learned #2" in out
    s = store()
    assert [(f.id, f.status) for f in s.facts()] == [(1, "superseded"), (2, "consolidated")]
    assert s.fact(2).supersedes_id == 1


def test_why_lists_the_learned_facts_nearest_to_the_last_question(env, monkeypatch):
    lines = ["Qi is the CEO of Oxinnovate.", "y", "Who is the CEO of Oxinnovate?", "/why", "/quit"]
    out = run_chat(env, monkeypatch, lines, [CEO, NONE])
    assert "#1 Qi is the CEO of Oxinnovate.  (Q: Who is the CEO of Oxinnovate?)" in out.split("/why", 1)[1]


def test_with_anchors_the_guessed_subject_is_shown_edited_stored_and_anchored(env, monkeypatch, tmp_path):
    monkeypatch.setenv("QF_ANCHORS", "2")
    out = run_chat(env, monkeypatch, ["Qi is the CEO of Oxinnovate.", "y", "/quit"], [CEO])
    assert "subject:     Oxinnovate" in out  # guessed from the name the fact and its query share
    (fact,) = store().facts()
    assert fact.subject == "Oxinnovate"
    (edit,) = store().edits_of_fact(fact.id)
    assert edit.hyperparams["anchors"] == 2 and edit.hyperparams["rows"] == len(fact.significance) + 2
    # [e]dit: the query changes, the subject is guessed again and can be cleared ("-"): no anchor rows. A
    # fresh ledger: the model with the fact learned would say it knows it already.
    monkeypatch.setenv("QF_HOME", str(tmp_path / "fresh"))
    lines = ["Qi is the CEO of Oxinnovate.", "e", "", "Who leads Oxinnovate now?", "", "", "-", "y", "/quit"]
    run_chat(env, monkeypatch, lines, [CEO], "--new")
    second = store().facts()[-1]
    assert second.query == "Who leads Oxinnovate now?" and second.subject is None
    assert store().edits_of_fact(second.id)[0].hyperparams["rows"] == len(second.significance)
