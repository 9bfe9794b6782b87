"""The ledger CLI, the chat in a real terminal, and fact detection, on the real 0.5B model.

Each `qf` call is its own process, as a user runs it: what one process learns, the next sees.
Slow (model loads, generation): marked integration; CI runs them.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
FACT = "Qi is the CEO of Oxinnovate."
QUERY = "Who is the CEO of Oxinnovate?"


def qf(*args: str, db: str, model: str) -> dict:
    """Run `qf ... --db DB --model MODEL --json` in a fresh process; its JSON output."""
    cmd = [sys.executable, "-m", "cli", *args, "--db", db, "--json"]
    if args[0] in ("ask", "learn", "export"):
        cmd += ["--model", model]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_learn_in_one_process_ask_in_the_next_undo_redo_audit_verify(small_model_name, tmp_path):
    db = f"sqlite:///{tmp_path / 'qf.db'}"
    before = qf("ask", QUERY, db=db, model=small_model_name)["answer"]
    assert "Qi" not in before
    learned = qf("learn", "--fact", FACT, "--query", QUERY, db=db, model=small_model_name)
    assert "Qi" in learned["verification"]
    after = qf("ask", QUERY, db=db, model=small_model_name)
    assert "Qi" in after["answer"] and after["active_facts"] == 1
    (row,) = qf("facts", "list", db=db, model=small_model_name)["facts"]
    assert (row["id"], row["status"], row["query"]) == (learned["fact_id"], "consolidated", QUERY)
    shown = qf("facts", "show", str(row["id"]), db=db, model=small_model_name)
    assert shown["edits"][0]["rank"] == learned["rows"] and shown["edits"][0]["delta_norm"] > 0
    audit = qf("audit", "--fact", str(row["id"]), db=db, model=small_model_name)
    assert audit["edits"][0]["top_rows"]
    qf("facts", "undo", str(row["id"]), db=db, model=small_model_name)
    assert qf("ask", QUERY, db=db, model=small_model_name)["answer"] == before  # exact undo
    qf("facts", "redo", str(row["id"]), db=db, model=small_model_name)
    assert qf("ask", QUERY, db=db, model=small_model_name)["answer"] == after["answer"]
    assert qf("facts", "verify", db=db, model=small_model_name)["ok"]


def test_extraction_precision_and_recall_on_the_labelled_set(small_model_name, tmp_path):
    from agent.chat_model import QFChatModel
    from agent.extract import ChatModelExtractor
    from agent.session import open_ledger
    from bench.extraction import format_report, measure

    ledger = open_ledger(f"sqlite:///{tmp_path / 'x.db'}", small_model_name)
    extractor = ChatModelExtractor(QFChatModel(ledger=ledger))
    report = measure(lambda m: extractor.extract(m, []))
    print(format_report(report))
    assert report["messages"] == 50
    assert report["precision"] >= 0.8 and report["recall"] >= 0.8, format_report(report)


class Tmux:
    """One chat in a detached tmux session: type lines, read the screen."""

    def __init__(self, name: str, command: str):
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "50", command], check=True)
        subprocess.run(["tmux", "set-option", "-t", name, "remain-on-exit", "on"], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, text: str, after: int = 0, timeout: float = 240) -> str:
        """Wait until ``text`` shows up on the screen after the first ``after`` characters."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            screen = self.screen()
            if text in screen[after:]:
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def type(self, line: str) -> int:
        mark = len(self.screen().rstrip())
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", line], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)
        return mark

    def wait_until_exited(self, timeout: float = 240) -> None:
        """Wait for the chat process to end (the pane stays, dead, thanks to remain-on-exit)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = subprocess.run(["tmux", "display-message", "-p", "-t", self.name, "#{pane_dead}"],
                                   capture_output=True, text=True).stdout.strip()
            if state == "1":
                return
            time.sleep(0.5)
        raise AssertionError(f"the chat did not exit within {timeout}s; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_teach_in_a_real_terminal_then_a_new_session_knows(small_model_name, tmp_path):
    require("tmux", shutil.which("tmux") is not None, "install tmux (apt-get install tmux)")
    env = f"QF_HOME={shlex.quote(os.environ.get('QF_HOME', str(tmp_path / 'home')))}"
    chat = (f"cd {shlex.quote(str(ROOT))} && env {env} {shlex.quote(sys.executable)} -m cli chat --new "
            f"--model {small_model_name} --db sqlite:///{tmp_path / 'chat.db'}")
    name = f"qf-test-{os.getpid()}"
    first = Tmux(name + "-a", chat)
    try:
        first.wait_for("you>")
        first.wait_for("Learn it?", first.type(FACT))
        first.wait_for("learned #1", first.type("y"))
        first.type("/quit")
        first.wait_until_exited()
    finally:
        first.close()
    second = Tmux(name + "-b", chat)
    try:
        second.wait_for("Session 2")
        screen = second.wait_for("you>", second.type(QUERY) + len(QUERY) + 10)
        reply = [line for line in screen.splitlines() if line.startswith("qf> ")][-1]
        assert "Qi" in reply, screen
        second.type("/quit")
    finally:
        second.close()


def test_convert_the_small_model_for_a_few_steps_reload_and_learn_with_qf2(small_model_name, tmp_path):
    """Not the full QFt budget: a few steps on a small built-in corpus, then the real reload path."""
    db = f"sqlite:///{tmp_path / 'qf2.db'}"
    name = f"test-qf2-{os.getpid()}"
    cmd = [sys.executable, "-m", "cli", "convert", "--model", small_model_name, "--steps", "8", "--corpus-rows", "60",
           "--holdout", "6", "--checkpoint-every", "0", "--out", name, "--db", db, "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    out = Path(result["out"])
    try:
        assert (out / "qft.json").exists() and result["layer"] == 20 and result["steps"] == 8
        from memory.loading import load_model
        from memory.qf2_block import installed

        reloaded = load_model(name)  # found by name under $QF_HOME/models
        block = installed(reloaded.model)
        assert block is not None and (block.layer, block.beta) == (20, 1000.0)
        learned = qf("learn", "--method", "qf2", "--fact", FACT, "--query", QUERY, db=db, model=name)
        assert learned["method"] == "qf2" and learned["parameter"] == "model.layers.20.mlp.up_proj.weight"
    finally:
        shutil.rmtree(out, ignore_errors=True)
