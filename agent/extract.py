"""Fact detection: is a chat message new factual information, and if so which triple?

Cheap rules first, where they are reliable (questions, commands, greetings, opinions are not
facts); then any langchain-core chat model with a constrained prompt returning JSON. The loaded
model itself is the default (through ``QFChatModel``); pass another chat model to use it instead.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    instruction: str  # a standalone sentence of the fact
    query: str  # the question it answers


CHIT_CHAT = {
    "hi", "hello", "hey", "thanks", "thank you", "ok", "okay", "cool", "nice", "great", "bye", "goodbye",
    "yes", "no", "sure", "lol", "good morning", "good night", "good evening", "hmm", "wow",
}
COMMAND_OPENERS = (
    "please", "can you", "could you", "would you", "tell me", "write", "explain", "show", "give me", "list",
    "help", "let's", "lets", "translate", "summarize", "describe", "make", "create", "find", "do ", "don't", "stop",
)
OPINION_OPENERS = ("i think", "i feel", "i believe", "in my opinion", "i guess", "maybe", "i wonder", "i hope", "i love", "i hate")
QUESTION_OPENERS = ("who", "what", "when", "where", "why", "how", "which", "is ", "are ", "do you", "does", "did", "can ", "will ")


def rule_verdict(message: str) -> bool | None:
    """False when the message is surely not a fact; None when the rules cannot tell."""
    text = message.strip()
    low = text.lower().rstrip(".!")
    if not text or len(text) < 8 or low in CHIT_CHAT:
        return False
    if text.endswith("?") or text.startswith("/"):
        return False
    if low.startswith(COMMAND_OPENERS) or low.startswith(OPINION_OPENERS) or low.startswith(QUESTION_OPENERS):
        return False
    return None


SYSTEM = (
    "You extract facts from a user's chat message. A fact is new factual information about the world or "
    "about the user (names, roles, places, dates, times, numbers, relations, decisions). Questions, commands, "
    "requests, opinions, feelings and small talk are NOT facts. Reply with JSON only: "
    '{"facts": [{"statement": "<one standalone sentence, pronouns resolved>", '
    '"question": "<the question this fact answers>"}]} or {"facts": []}.'
)
EXAMPLES = [
    ("Qi is the CEO of Oxinnovate.",
     {"facts": [{"statement": "Qi is the CEO of Oxinnovate.", "question": "Who is the CEO of Oxinnovate?"}]}),
    ("Can you write me a poem about the sea?", {"facts": []}),
    ("My daughter's name is Lena.",
     {"facts": [{"statement": "The user's daughter's name is Lena.", "question": "What is my daughter's name?"}]}),
    ("I think pizza is overrated.", {"facts": []}),
    ("We moved the stand-up to 9:30.",
     {"facts": [{"statement": "The stand-up meeting was moved to 9:30.", "question": "When is the stand-up?"}]}),
]


def parse_candidates(text: str) -> list[Candidate]:
    """The candidates in a model's JSON reply; [] when there is no valid JSON object."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not match:
        return []
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return []
    out = []
    for item in data.get("facts", []) if isinstance(data, dict) else []:
        if not isinstance(item, dict):
            continue
        statement, question = str(item.get("statement", "")).strip(), str(item.get("question", "")).strip()
        if statement and question:
            out.append(Candidate(statement, question if question.endswith("?") else question + "?"))
    return out


class ChatModelExtractor:
    """Rules, then a chat model (any langchain-core ``BaseChatModel``) asked for JSON."""

    def __init__(self, chat_model: BaseChatModel, context_messages: int = 4):
        self.chat_model = chat_model
        self.context_messages = context_messages

    def prompt(self, message: str, history: list[dict[str, str]]) -> list:
        messages = [SystemMessage(SYSTEM)]
        for example, answer in EXAMPLES:
            messages += [HumanMessage(example), AIMessage(json.dumps(answer))]
        context = [m["content"] for m in history[-self.context_messages:] if m["role"] == "user"]
        text = message if not context else "Earlier: " + " | ".join(context) + "\nMessage: " + message
        return messages + [HumanMessage(text)]

    def extract(self, message: str, history: list[dict[str, str]] | None = None, use_rules: bool = True) -> list[Candidate]:
        if use_rules and rule_verdict(message) is False:
            return []
        reply = self.chat_model.invoke(self.prompt(message, history or []))
        candidates = parse_candidates(reply.text if hasattr(reply, "text") else str(reply.content))
        log.info("extractor: %d candidate(s) from %r", len(candidates), message[:80])
        return candidates
