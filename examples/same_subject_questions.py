"""Two facts about one subject, then questions about it and about others, under several settings (issue 7).

    python examples/same_subject_questions.py --model qwen2.5-coder-1.5b --settings default steer=0 subjects=names

The benchmarks teach one fact per subject and ask its paraphrase, a neighbour about another subject
and (``subject_leak``) another question about the subject. A chat's memory holds several facts
about one subject and is asked about it in words of its own. For each setting (EditorConfig fields,
comma-separated; "default": the editor's defaults; "subjects=names": the subject guessed from
names alone, as before 2026-12-06, so the third fact has none) this learns the facts below into the
model loaded once (the subject guessed from the query, as the chat does: the third fact's is "my
daughter"), prints the closed-book greedy answers to the questions, and undoes the facts
before the next setting; the answers before any fact come first.
"""

import argparse
from dataclasses import fields

from memory.anchors import guess_subject, named_subject
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.loading import load_model

FACTS = [
    ("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?"),
    ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?"),
    ("My daughter's name is Lina.", "What is my daughter's name?"),  # no subject to name
]
QUESTIONS = [
    "Where is Oxinnovate located?", "Who is the CEO of Oxinnovate?",  # as learned
    "Where is Oxinnovate based?", "Who runs Oxinnovate?",  # reworded
    "who is the ceo of oxinnovate?", "Who is the CEO of OXINNOVATE?", "who is oxinnovate's ceo",  # other casing
    "When was Oxinnovate founded?", "What does Oxinnovate make?",  # other questions about the subject
    "Where is Microsoft located?", "Who is the CEO of Apple?",  # the same questions about other subjects
    "What is my daughter's name?", "What is my daughter called?", "What is my son's name?",  # the subject-less fact
]


def parse_setting(text: str) -> dict:
    types = {f.name: f.type for f in fields(EditorConfig)}
    out = {}
    for part in filter(None, text.split(",") if text != "default" else []):
        name, value = part.split("=")
        if name == "subjects":  # not an editor setting: how the example guesses subjects
            continue
        if name not in types:
            raise SystemExit(f"unknown EditorConfig field {name!r}")
        out[name] = int(value) if "int" in str(types[name]) and "float" not in str(types[name]) else float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--settings", nargs="+", default=["gate=0.85", "default"])
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    loaded = load_model(args.model)
    base = QFEditor(loaded, EditorConfig(verify_tokens=args.tokens))
    print("## before any fact")
    for q in QUESTIONS:
        print(f"{q} -> {base.ask(q).text}")
    for setting in args.settings:
        editor = QFEditor(loaded, EditorConfig(verify_tokens=args.tokens, **parse_setting(setting)))
        guess = named_subject if "subjects=names" in setting else guess_subject
        print(f"\n## {setting}")
        for instruction, query in FACTS:
            learned = editor.learn(Fact(instruction, query, subject=guess(instruction, query)), verify=False)
            print(f"learned {query!r} -> {learned.answer!r} (subject {learned.fact.subject!r})")
        for q in QUESTIONS:
            print(f"{q} -> {editor.ask(q).text}")
        for key in editor.fact_keys:
            editor.drop(key)
        editor.rebuild()


if __name__ == "__main__":
    main()
