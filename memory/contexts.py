"""Context prefixes: a fact's query also asked after a short unrelated sentence (issue 7).

A fact is learned from its query alone at the start of a prompt but met after other text: earlier
turns of a chat, or (CounterFact's paraphrases) an unrelated fragment before the question. The key
at the answering position moves with what comes before it; MEMIT averages its keys over a few
generated prefixes for that reason. With ``EditorConfig.contexts = N`` the editor also captures the
query after the first N of these prefixes, as more questions of the fact (the same answer, rows
solved together, stored with the fact like its phrasings, so undo and replay stay exact).
Written for qf; none is taken from the benchmark sets.
"""

CONTEXT_PREFIXES = (
    "I was reading about this earlier.",
    "Quick question.",
    "My friend and I were talking about it last night.",
    "This came up at work today.",
    "Sorry, one more thing.",
    "It was a long day, but anyway.",
    "Let me check something with you.",
    "The weather was cold all week.",
)


def check_contexts(count: int) -> int:
    """``count`` when there are that many prefixes; a ValueError otherwise."""
    if not 0 <= count <= len(CONTEXT_PREFIXES):
        raise ValueError(f"contexts must be 0..{len(CONTEXT_PREFIXES)}, not {count}")
    return count


def in_contexts(query: str, count: int) -> tuple[str, ...]:
    """``query`` after each of the first ``count`` prefixes."""
    return tuple(f"{prefix} {query}" for prefix in CONTEXT_PREFIXES[:check_contexts(count)])
