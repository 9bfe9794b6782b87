"""Other ways to ask a fact's question, written by the model itself (issue 7, "Generalize").

QF writes the rows of the question it is given; a rephrasing reaches those rows only partly. A
fact can therefore carry extra phrasings of its query: each is captured like the query (the
instruction in context vs not, the same answer teacher-forced) and its rows join the fact's, so
one solve covers them together. The model is asked for them *without* the instruction in context
(it must not answer, only rephrase); the parse keeps distinct questions and drops numbering,
answers and the query itself.
"""

from __future__ import annotations

import re

from memory.generate import greedy_reply

PHRASING_REQUEST = (
    "Rewrite the question below in {n} different ways that ask for exactly the same thing. "
    "Write one question per line, with no numbering and no answer.\n\nQuestion: {query}"
)
_LEAD = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|question\s*\d*\s*:)\s*", re.IGNORECASE)


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.lower()))


def parse_phrasings(text: str, query: str, limit: int) -> tuple[str, ...]:
    """At most ``limit`` distinct questions from the model's lines: bullets and numbers removed,
    each a question (ends with "?"), none equal to ``query`` or each other (ignoring case and
    punctuation)."""
    seen, out = {_words(query)}, []
    for line in text.splitlines():
        candidate = _LEAD.sub("", line).strip().strip('"').strip()
        if not candidate.endswith("?") or len(candidate) < 4:
            continue
        key = _words(candidate)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(candidate)
        if len(out) == limit:
            break
    return tuple(out)


def generate_phrasings(model, tokenizer, query: str, n: int, system: str | None = None,
                       max_new_tokens: int = 120) -> tuple[str, ...]:
    """Up to ``n`` rephrasings of ``query`` by the model's greedy answer (may be fewer)."""
    if n <= 0:
        return ()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": PHRASING_REQUEST.format(n=n, query=query)}]
    reply = greedy_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens)
    return parse_phrasings(reply.text, query, n)
