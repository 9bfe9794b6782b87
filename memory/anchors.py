"""Anchor rows: what the fact must NOT change (issue 7, "Preserve what the model knows").

QF writes the fact at the answer positions of its question. At the layers where the answer is
decided, the key of that position says "this relation is being answered" much more than *which
subject* it is asked of, so the same question about another subject ("Who is the CEO of Apple?"
beside "Who is the CEO of Oxinnovate?") has a nearby key and gets much of the fact's change: the
neighbours the benchmarks measure break (docs/RESULTS.md). The instructed pass does not carry the
fact at the subject's own tokens either, at any layer, so writing there is no way out (measured by
activation patching, docs/RESULTS.md "Anchor rows").

An anchor is the fact's query with its subject swapped for another one, from a shipped list of
well-known names of every kind. Its row is the position that decides the answer (the last prompt
token), captured once in the plain pass and used as both passes: ``U = U'`` and ``V = V'``, so its
QF residual is exactly zero and the solve keeps ``dW k = 0`` there. The update must then reach the
fact's own key through what differs from the anchors' keys, the subject, instead of the relation
the neighbours share. Anchors are rows of the fact like any other: stored with its captures, so
the ledger's rebuild, undo and replay stay exact. Their cost is one rank per anchor and one
packed forward pass per fact (QFEditor.capture_anchors).
"""

from __future__ import annotations

import hashlib
import re

# Well-known subjects of many kinds (people, places, organizations, works, things), so that an
# anchor exists for any kind of fact without asking the model; which ones a fact gets is a
# deterministic function of its query and subject (contrast_queries).
CONTRAST_SUBJECTS = (
    "Albert Einstein", "Marie Curie", "William Shakespeare", "Leonardo da Vinci", "Nelson Mandela",
    "Frida Kahlo", "Isaac Newton", "Cleopatra", "Mahatma Gandhi", "Ada Lovelace", "Pablo Picasso",
    "Wolfgang Amadeus Mozart", "Serena Williams", "Lionel Messi", "Queen Victoria", "Confucius",
    "Charles Darwin", "Jane Austen", "Barack Obama", "Akira Kurosawa", "Paris", "Tokyo", "Cairo",
    "Brazil", "Canada", "the Amazon River", "Mount Everest", "Australia", "Istanbul", "Norway",
    "Kenya", "Lake Baikal", "Toyota", "Microsoft", "the Red Cross", "Harvard University", "UNESCO",
    "Nokia", "Volkswagen", "the BBC", "Real Madrid", "Samsung", "Interpol", "IKEA", "Mona Lisa",
    "Hamlet", "the Eiffel Tower", "Don Quixote", "the Beatles", "Star Wars", "the Great Wall of China",
    "Python", "the Moon", "penicillin", "the violin", "chess", "the Titanic", "Linux", "the Nile",
    "Beethoven's Ninth Symphony",
)


def contrast_subjects(query: str, subject: str, count: int) -> tuple[str, ...]:
    """``count`` subjects from CONTRAST_SUBJECTS other than ``subject`` and not named in the query,
    in an order fixed by the query and subject (the same fact always gets the same anchors)."""
    if count < 0:
        raise ValueError(f"the number of anchors must be >= 0, not {count}")
    lowered = query.lower()
    usable = [s for s in CONTRAST_SUBJECTS if s.lower() != subject.lower() and s.lower() not in lowered]
    seed = f"{query}\x00{subject}".encode()
    ranked = sorted(usable, key=lambda s: hashlib.sha256(seed + s.encode()).digest())
    return tuple(ranked[:count])


def contrast_queries(query: str, subject: str | None, count: int) -> tuple[str, ...]:
    """The query asked of ``count`` other subjects: its every occurrence of ``subject`` replaced.
    Empty (no anchors) when the fact has no subject or the query does not name it."""
    if not subject or not subject.strip() or subject not in query or count == 0:
        return ()
    return tuple(query.replace(subject, other) for other in contrast_subjects(query, subject, count))


_WORD = r"[\w'.&-]*[A-Z0-9][\w'.&-]*"  # a word with a capital or a digit: Oxinnovate, iPhone, 15
_NAME_RUN = re.compile(rf"{_WORD}(?:\s+(?:(?:of|the|de|da|von|van)\s+)*{_WORD})*")
_TITLE = re.compile(r"^[A-Z]{2,5}\s+of\s+")  # "CEO of Oxinnovate" names Oxinnovate

# "my daughter", "our office", "my favourite colour": a possessive and up to three words after it
_POSSESSIVES = ("my", "our")
_OWNED = re.compile(rf"\b(?:{'|'.join(_POSSESSIVES)})((?:\s+[a-z][a-z-]*){{1,3}})", re.IGNORECASE)


def guess_subject(instruction: str, query: str) -> str | None:
    """The subject of a fact when none is given: the name it is about (``named_subject``), else what
    the user owns (``owned_subject``); None when there is neither ("When is the stand-up?")."""
    return named_subject(instruction, query) or owned_subject(instruction, query)


def named_subject(instruction: str, query: str) -> str | None:
    """The longest run of words with capitals or digits in the query (after its first word; "of",
    "the", ... may join them inside a name; a leading title such as "CEO of" dropped) that the
    instruction names too; None when there is none."""
    first = re.match(r"\s*\S+", query)
    runs = [_TITLE.sub("", m.group(0).rstrip(".'")) for m in _NAME_RUN.finditer(query, first.end() if first else 0)]
    runs = [r for r in runs if r and r in instruction and r.lower() not in _POSSESSIVES]
    return max(runs, key=len) if runs else None


def owned_subject(instruction: str, query: str) -> str | None:
    """What the user owns that the query asks about, as the query writes it: "my daughter" in "What
    is my daughter's name?", the longest such phrase the instruction names too (in any case); None
    when there is none. It is a subject like a name for the subject gate (memory.subject_gate): the
    fact answers where "my daughter" has been named, not "What is my son's name?"."""
    lowered = instruction.lower()
    for m in _OWNED.finditer(query):
        words = m.group(1).split()
        possessive = m.group(0)[:m.start(1) - m.start(0)]
        for n in range(len(words), 0, -1):
            phrase = f"{possessive} {' '.join(words[:n])}"
            if phrase.lower() in lowered:
                return phrase
    return None
