"""Other ways to ask a fact's question, written by the model itself (issue 7, "Generalize").

QF writes the rows of the question it is given; a rephrasing reaches those rows only partly. A
fact can therefore carry extra phrasings of its query: each is captured like the query (the
instruction in context vs not, the same answer teacher-forced) and its rows join the fact's, so
one solve covers them together.

The model is asked *without* the instruction in context (it must rephrase, not answer), once per
phrasing with a different style hint, all in one batched greedy generation. A small model asked
for several rephrasings in one reply tends to repeat the question or copy a worked example
(measured on the 0.5B, docs/RESULTS.md); one style per request gives distinct ones. The parse keeps
the first line of each reply if it is a question, differs from the query and the others (ignoring
case and punctuation), still names everything the query names and speaks of the same people: a
rephrasing that lost the subject ("When was AWS Web Services established?" for "When was WEFS
established?") or turned "my" into "your" ("What is your daughter's name?" for "What is my
daughter's name?", both seen on the 0.5B) would teach the answer to another question.
"""

from __future__ import annotations

import re

from memory.generate import greedy_batch, stop_ids
from memory.prompts import render_conversation

STYLES = ("Use different words.", "Make it shorter.", "Start it with a different word.", "Make it more casual.")
PHRASING_REQUEST = ("Rewrite this question so that it asks exactly the same thing. {style} "
                    "Reply with the new question only.\n\n{query}")
_LEAD = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+[.):]|question\s*\d*\s*:)\s*", re.IGNORECASE)


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.lower()))


PERSONS = frozenset({"i", "me", "my", "mine", "we", "us", "our", "ours", "you", "your", "yours"})


def names_in(query: str) -> set[str]:
    """What a question names: its capitalized words after the first, and words with digits (lowercased)."""
    words = re.findall(r"\w+", query)
    return {w.lower() for i, w in enumerate(words) if (i > 0 and w[:1].isupper()) or any(c.isdigit() for c in w)}


def parse_phrasings(text: str, query: str, limit: int) -> tuple[str, ...]:
    """At most ``limit`` distinct questions from the model's lines: bullets and numbers removed,
    each a question (ends with "?") naming all the query names with the same first and second
    persons, none equal to ``query`` or each other (ignoring case and punctuation)."""
    seen, out, names = {_words(query)}, [], names_in(query)
    persons = PERSONS & set(_words(query))
    for line in text.splitlines():
        candidate = _LEAD.sub("", line).strip().strip('"').strip()
        if not candidate.endswith("?") or len(candidate) < 4:
            continue
        key = _words(candidate)
        if not key or key in seen or not names <= set(key) or PERSONS & set(key) != persons:
            continue
        seen.add(key)
        out.append(candidate)
        if len(out) == limit:
            break
    return tuple(out)


def generate_phrasings(model, tokenizer, query: str, n: int, system: str | None = None,
                       max_new_tokens: int = 28) -> tuple[str, ...]:
    """Up to ``n`` rephrasings of ``query`` (at most one per style), from one batched greedy pass."""
    if n <= 0:
        return ()
    head = [{"role": "system", "content": system}] if system else []
    prompts = [render_conversation(tokenizer, head + [{"role": "user", "content": PHRASING_REQUEST.format(
        style=style, query=query)}]) for style in STYLES[:n]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    replies = greedy_batch(model, prompts, stop_ids(tokenizer), max_new_tokens, pad)
    firsts = [tokenizer.decode(r, skip_special_tokens=True).strip().split("\n")[0] for r in replies]
    return parse_phrasings("\n".join(firsts), query, n)
