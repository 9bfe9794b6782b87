"""`qf convert` then `qf learn --method qf2` through the CLI on a tiny random model."""

import json

from click.testing import CliRunner

import cli


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_convert_then_learn_with_qf2(tmp_path, tiny_model_dir, monkeypatch):
    from memory.consolidate import QFEditor

    stock = tiny_model_dir
    monkeypatch.setattr(QFEditor, "instructed_answer", lambda self, fact: "unused")

    refused = invoke("learn", "--method", "qf2", "--model", str(stock), "--dtype", "float32",
                     "--fact", "Qi is the CEO of Oxinnovate.", "--query", "Who is the CEO of Oxinnovate?", "--answer", "Qi.")
    assert refused.exit_code != 0 and "qf convert" in refused.output

    done = invoke("convert", "--model", str(stock), "--dtype", "float32", "--layer", "2", "--steps", "6",
                  "--corpus-rows", "40", "--holdout", "4", "--checkpoint-every", "0", "--out", "tiny-conv", "--json")
    assert done.exit_code == 0, done.output + repr(done.exception)
    result = json.loads(done.output)
    assert (result["name"], result["layer"], result["steps"]) == ("tiny-conv", 2, 6)
    assert (tmp_path / "home" / "models" / "tiny-conv" / "qft.json").exists()
    assert result["validation_loss"] is not None and result["checkpoint_id"] >= 1

    learned = invoke("learn", "--method", "qf2", "--model", "tiny-conv", "--dtype", "float32", "--lr", "1e-3",
                     "--fact", "Qi is the CEO of Oxinnovate.", "--query", "Who is the CEO of Oxinnovate?",
                     "--answer", "Qi.", "--json")
    assert learned.exit_code == 0, learned.output + repr(learned.exception)
    data = json.loads(learned.output)
    assert data["method"] == "qf2" and data["layer"] == 2 and data["parameter"].endswith("layers.2.mlp.up_proj.weight")
    shown = json.loads(invoke("facts", "show", str(data["fact_id"]), "--json").output)
    assert [e["method"] for e in shown["edits"]] == ["qf2"]
    asked = json.loads(invoke("ask", "Who is the CEO of Oxinnovate?", "--model", "tiny-conv", "--dtype", "float32",
                              "--max-tokens", "4", "--json").output)
    assert asked["active_facts"] == 1

    # The chat on the converted model learns with QF2 (the solved rule by default), asking the QF2 editor
    from memory.qf2_editor import QF2Editor

    monkeypatch.setattr(QF2Editor, "instructed_answer", lambda self, fact: "Qi is the CEO.")
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    fact = {"statement": "Qi is the CEO of Oxinnovate.", "question": "Who is the CEO of Oxinnovate?"}
    monkeypatch.setenv("QF_FAKE_EXTRACTOR", json.dumps([json.dumps({"facts": [fact]})]))
    chat = CliRunner().invoke(cli.main, ["chat", "--model", "tiny-conv", "--dtype", "float32", "--extractor",
                                         "fake_extractor:make", "--anchors", "2"],
                              input="Qi is the CEO of Oxinnovate.\ny\n/quit\n")
    assert chat.exit_code == 0, chat.output + repr(chat.exception)
    assert "note: --anchors only apply to QF; this chat learns with QF2 and ignores them." in chat.output
    assert "QF2 at layer 2; 1 fact(s) active" in chat.output and "Qi is the CEO." in chat.output
    shown = json.loads(invoke("facts", "show", "2", "--json").output)
    assert shown["answer"] == "Qi is the CEO." and [(e["method"], e["hyperparams"]["rule"]) for e in shown["edits"]] == [
        ("qf2", "solve")]


def test_an_interrupted_conversion_is_resumed_or_restarted_only_when_asked(tmp_path, tiny_model_dir):
    args = ("convert", "--model", str(tiny_model_dir), "--dtype", "float32", "--layer", "2", "--steps", "6",
            "--corpus-rows", "40", "--holdout", "4", "--checkpoint-every", "2", "--out", "tiny-cut", "--json")
    nothing = invoke(*args, "--resume")
    assert nothing.exit_code != 0 and "no interrupted conversion" in nothing.output
    partial = tmp_path / "home" / "models" / "tiny-cut" / "resume"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps({"step": 4, "key": {}, "recent_losses": []}))
    refused = invoke(*args)
    assert refused.exit_code != 0 and "--resume" in refused.output and "step 4" in refused.output
    assert partial.exists()  # nothing lost
    restarted = invoke(*args, "--restart")
    assert restarted.exit_code == 0, restarted.output + repr(restarted.exception)
    assert json.loads(restarted.output)["steps"] == 6 and not partial.exists()


def test_convert_flags_default_to_the_library_settings_and_reach_it(tmp_path, tiny_model_dir):
    from memory.qft import QFtConfig

    options = {p.name: p for p in cli.convert.params}
    assert options["distill"].default == QFtConfig.distill and options["eval_every"].default == QFtConfig.eval_every
    assert options["surrogate_beta"].default == QFtConfig.surrogate_beta
    done = invoke("convert", "--model", str(tiny_model_dir), "--dtype", "float32", "--layer", "2", "--steps", "4",
                  "--corpus-rows", "20", "--holdout", "2", "--checkpoint-every", "0", "--distill", "0.5",
                  "--eval-every", "2", "--out", "tiny-distill")
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "held-out chats (distill 0.5)" in done.output and "general requests (greedy):" in done.output
    saved = json.loads((tmp_path / "home" / "models" / "tiny-distill" / "qft.json").read_text())
    assert saved["distill"] == 0.5 and [p["step"] for p in saved["chat_curve"]] == [2, 4]
