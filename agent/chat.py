"""The terminal chat: replies stream, new facts are noticed, shown, confirmed, then learned.

I/O goes through ``ChatIO`` (a line reader and a writer), so the same loop runs in a terminal,
with piped standard input (the confirmation is read from the next line) and in tests.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.extract import Candidate
from agent.ledger_editor import LedgerEditor
from memory.anchors import guess_subject
from memory.consolidate import ConsolidationError
from memory.fact import Fact
from memory.generate import stream_reply
from memory.prompts import render_conversation

log = logging.getLogger(__name__)

HELP = """Commands:
  /remember TEXT  treat TEXT as a fact (same confirmation as a detected one)
  /facts          list the facts in the ledger
  /forget ID      undo a learned fact (exact)
  /undo           undo the last fact learned in this chat
  /why            which learned facts bear on the last answer
  /help           this help
  /quit           leave (Ctrl-D too); Ctrl-C stops a reply"""


@dataclass
class ChatIO:
    read: Callable[[str], str]  # prompt -> one line; raises EOFError at the end of input
    write: Callable[[str], None]  # writes text as is (no newline added)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def similarity(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa and wb else 0.0


FUNCTION_WORDS = {
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "of", "in", "on", "at", "to", "for", "and", "or",
    "by", "with", "from", "as", "it", "its", "that", "this", "my", "your", "our", "his", "her", "their", "i", "we",
    "you", "he", "she", "they", "has", "have", "had", "do", "does", "did", "not", "no", "so", "s",
}


def carries_information(instruction: str, query: str, answer: str) -> bool:
    """Does the answer contain at least one content word the instruction adds to the query?"""
    new = words(instruction) - words(query) - FUNCTION_WORDS
    return not new or bool(new & words(answer))


class Chat:
    def __init__(self, ledger: LedgerEditor, extractor, io: ChatIO, session_id: int, max_new_tokens: int = 512):
        self.ledger, self.extractor, self.io = ledger, extractor, io
        self.store = ledger.store
        self.session_id = session_id
        self.max_new_tokens = max_new_tokens
        self.history: list[dict[str, str]] = [
            {"role": m["role"], "content": m["content"]} for m in self.store.messages(session_id)
        ]
        self.learned_here: list[int] = []
        self.method = "qf2" if ledger.qf2 is not None else "qf"  # QF2 where the model is converted
        self.last_question = ""

    def say(self, text: str = "") -> None:
        self.io.write(text + "\n")

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            try:
                line = self.io.read("you> ")
            except EOFError:
                self.say()
                return
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /quit to leave)")
                continue
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """One input line; False to quit."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self.command(text)
        message_id = self.store.add_message(self.session_id, "user", text)
        if self.too_long_to_learn(text):
            self.say("(that message is too long to learn facts from; /remember a short sentence instead)")
        elif self.consider(text, message_id, forced=False):
            self.history.append({"role": "user", "content": text})
            return True
        self.reply(text)
        return True

    # --- commands -------------------------------------------------------------------------
    def command(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/remember":
            if not arg:
                self.say("usage: /remember TEXT")
            elif self.too_long_to_learn(arg):
                self.say("that is too long to learn as one fact; give one short sentence")
            else:
                message_id = self.store.add_message(self.session_id, "user", arg)
                if not self.consider(arg, message_id, forced=True):
                    self.say("I could not turn that into a fact; try a plain sentence, e.g. 'Qi is the CEO of Oxinnovate.'")
        elif name == "/facts":
            self.list_facts()
        elif name == "/forget":
            self.forget(arg)
        elif name == "/undo":
            if not self.learned_here:
                self.say("nothing learned in this chat yet")
            else:
                self.forget(str(self.learned_here[-1]))
        elif name == "/why":
            self.why()
        else:
            self.say(f"unknown command {name}; /help lists them")
        return True

    def list_facts(self) -> None:
        facts = self.store.facts()
        if not facts:
            self.say("no facts yet")
        for f in facts:
            self.say(f"  #{f.id} [{f.status}] {f.instruction}  (Q: {f.query} A: {f.answer})")

    def forget(self, arg: str) -> None:
        if not arg.isdigit():
            self.say("usage: /forget ID (see /facts)")
            return
        try:
            seconds = self.ledger.undo(int(arg))
        except (LookupError, ValueError) as exc:
            self.say(f"cannot forget #{arg}: {exc}")
            return
        if int(arg) in self.learned_here:
            self.learned_here.remove(int(arg))
        self.say(f"forgot #{arg} (weights rebuilt in {seconds:.2f}s)")

    def why(self) -> None:
        if not self.last_question:
            self.say("ask something first")
            return
        scored = [(similarity(f.query + " " + f.instruction, self.last_question), f)
                  for f in self.store.facts(status="consolidated")]
        ranked = [f for score, f in sorted(scored, key=lambda pair: pair[0], reverse=True) if score > 0][:3]
        if not ranked:
            self.say("no learned fact is close to the last question")
        for f in ranked:
            self.say(f"  #{f.id} {f.instruction}  (Q: {f.query})")

    # --- facts ----------------------------------------------------------------------------
    def too_long_to_learn(self, text: str) -> bool:
        """A fact must fit, with the extraction prompt and its answer, in a quarter of the context."""
        context = getattr(self.ledger.loaded.model.config, "max_position_embeddings", 32768)
        return len(self.ledger.loaded.tokenizer(text).input_ids) > context // 4

    def consider(self, text: str, message_id: int, forced: bool) -> bool:
        """Detect facts in ``text`` and run the confirmation for each; True if it was a fact.

        ``forced`` (/remember) skips the cheap rules and goes straight to the extractor."""
        candidates = self.extractor.extract(text, self.history, use_rules=not forced)
        for candidate in candidates:
            self.confirm_and_learn(candidate, message_id)
        return bool(candidates)

    def _triple(self, candidate: Candidate) -> Fact | None:
        fact = Fact(candidate.instruction, candidate.query)
        # The editor that will write it asks: QF2 asks at its base weights and keeps the emitted tokens.
        editor = self.ledger.qf2 if self.method == "qf2" else self.ledger.current
        try:
            answer = editor.instructed_answer(fact)
        except ConsolidationError as exc:
            self.say(f"cannot learn that: {exc}")
            return None
        plain = editor.ask(fact.query).text
        if plain.strip().lower() == answer.strip().lower():
            self.say(f"I already know that: {plain}")
            return None
        subject = guess_subject(candidate.instruction, candidate.query)
        return self.ledger.with_phrasings(Fact(candidate.instruction, candidate.query, answer, subject=subject))

    def confirm_and_learn(self, candidate: Candidate, message_id: int) -> None:
        fact = self._triple(candidate)
        if fact is None:
            return
        while True:
            conflict = self._conflict(fact)
            self.say("New fact:")
            self.say(f"  instruction: {fact.instruction}\n  query:       {fact.query}\n  answer:      {fact.answer}")
            for phrasing in fact.phrasings:
                self.say(f"  also asked:  {phrasing}")
            if self._subject_acts():
                self.say(f"  subject:     {fact.subject or '-'}")
            if not carries_information(fact.instruction, fact.query, fact.answer):
                self.say("  (the answer does not contain what the fact says: edit it?)")
            if conflict:
                self.say(f"  this replaces #{conflict.id}: {conflict.instruction} (A: {conflict.answer})")
            choice = self._ask("Learn it? [y]es / [n]o / [e]dit: ").lower()[:1]
            if choice == "y":
                self._learn(fact, message_id, conflict.id if conflict else None)
                return
            if choice == "e":
                fact = self._edit(fact)
                continue
            self.store.add_fact(fact.instruction, fact.query, fact.answer, None, status="rejected",
                                source={"session": self.session_id, "message": message_id},
                                phrasings=list(fact.phrasings), subject=fact.subject)
            self.say("not learned")
            return

    def _subject_acts(self) -> bool:
        """Whether a fact's subject acts on how it is learned: QF's anchors swap it (memory.anchors), its
        subject gate fires the fact where it is named (memory.subject_gate; on by default)."""
        config = self.ledger.current.config  # as the editor decided it
        return self.method == "qf" and bool(config.anchors or config.subject_gate)

    def _ask(self, prompt: str) -> str:
        try:
            return self.io.read(prompt).strip()
        except EOFError:
            return "n"

    def _edit(self, fact: Fact) -> Fact:
        """Each field, Enter keeping it; the phrasings as one line separated by " | " ("-": none); the
        subject (where it acts) as written in the query ("-": none)."""
        fields = {}
        for name in ("instruction", "query", "answer"):
            value = self._ask(f"  {name} [{getattr(fact, name)}]: ")
            fields[name] = value or getattr(fact, name)
        value = self._ask(f"  also asked (separate with |, - for none) [{' | '.join(fact.phrasings)}]: ")
        phrasings = fact.phrasings if not value else () if value == "-" else [p for p in value.split("|") if p.strip()]
        subject = fact.subject if fields["query"] == fact.query else guess_subject(fields["instruction"], fields["query"])
        if self._subject_acts():
            value = self._ask(f"  subject (as written in the query, - for none) [{subject or '-'}]: ")
            subject = subject if not value else None if value == "-" else value
        try:
            return Fact(**fields, phrasings=tuple(phrasings), subject=subject)
        except ValueError as exc:  # a subject the query does not name: keep the fact, drop the subject
            self.say(f"  {exc}; learning it without a subject")
            return Fact(**fields, phrasings=tuple(phrasings))

    def _conflict(self, fact: Fact):
        for other in self.store.facts(status="consolidated"):
            if words(other.query) == words(fact.query) and (other.answer or "").strip() != fact.answer.strip():
                return other
        return None

    def _learn(self, fact: Fact, message_id: int, supersedes: int | None) -> None:
        start = time.perf_counter()
        try:
            learned = self.ledger.learn(fact, source={"session": self.session_id, "message": message_id},
                                        supersedes_id=supersedes, method=self.method)
        except (ConsolidationError, ValueError) as exc:
            self.say(f"not learned: {exc}")
            return
        self.learned_here.append(learned.fact_id)
        self.say(f"learned #{learned.fact_id} in {time.perf_counter() - start:.1f}s; "
                 f"asked closed-book now: {learned.result.verification}")

    # --- replies --------------------------------------------------------------------------
    def _fit(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], int] | None:
        """Drop the oldest turns until prompt + reply fit the context; (messages, reply budget)."""
        context = getattr(self.ledger.loaded.model.config, "max_position_embeddings", 32768)
        budget = min(self.max_new_tokens, context // 4)  # room kept for the reply
        while (length := len(render_conversation(self.ledger.loaded.tokenizer, messages))) > context - budget:
            if len(messages) <= 1:
                return None
            messages = messages[1:] if messages[0]["role"] != "system" else messages[:1] + messages[2:]
        return messages, min(self.max_new_tokens, context - length)

    def reply(self, text: str) -> None:
        self.last_question = text
        self.history.append({"role": "user", "content": text})
        system = self.ledger.config.system
        fitted = self._fit(([{"role": "system", "content": system}] if system else []) + self.history)
        if fitted is None:
            self.say("that message is longer than the model's context; I cannot answer it")
            return
        messages, budget = fitted
        pieces = []
        self.io.write("qf> ")
        try:
            for piece in stream_reply(self.ledger.loaded.model, self.ledger.loaded.tokenizer, messages, budget):
                pieces.append(piece)
                self.io.write(piece)
        except KeyboardInterrupt:
            self.io.write(" [stopped]")
        self.say()
        answer = "".join(pieces).strip()
        self.history.append({"role": "assistant", "content": answer})
        self.store.add_message(self.session_id, "assistant", answer)
