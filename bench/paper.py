"""The 8 steps of the QF paper's Table 1, on any model (the default is the paper's setting).

Each step asks one question greedily and checks the answer against an expectation; the
table is printed by the CLI and examples/qf_paper_protocol.py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from memory.consolidate import QFEditor
from memory.fact import Fact
from memory.prompts import instructed_system

FIRST = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?")
SECOND = Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?")
CONTROL = "Who is the CEO of Apple?"
CONTROL_ANSWER = "Tim Cook"  # the Coder models answer Nvidia's CEO wrongly, so Apple is the control
PARAPHRASE = "The person behind Oxinnovate?"


@dataclass
class Step:
    step: int
    description: str
    query: str
    answer: str
    expected: str
    passed: bool


def mentions(answer: str, expected: str) -> bool:
    """Whole-word, case-insensitive containment ('Qi' does not match 'Qingdao')."""
    return re.search(rf"\b{re.escape(expected)}\b", answer, flags=re.IGNORECASE) is not None


def run_paper_protocol(editor: QFEditor) -> list[Step]:
    """Runs the 8 steps; learns two facts on ``editor`` (and removes them at the end)."""
    steps: list[Step] = []

    def ask(n: int, description: str, query: str, expected: str, system: str | None = None, negate: bool = False):
        answer = editor.ask(query, system=system).text
        hit = mentions(answer, expected)
        label = f"not {expected}" if negate else expected
        steps.append(Step(n, description, query, answer, label, hit != negate))
        return answer

    ask(1, "plain query, before learning", FIRST.query, "Qi", negate=True)
    ask(2, "instruction in context", FIRST.query, "Qi", system=instructed_system(FIRST.instruction, editor.config.system))
    control_before = ask(3, "control, before learning", CONTROL, CONTROL_ANSWER)
    first = editor.learn(FIRST, key="paper-1", verify=False)
    ask(4, "after learning fact 1", FIRST.query, "Qi")
    control_after = ask(5, "control, after learning", CONTROL, CONTROL_ANSWER)
    steps[-1].passed = steps[-1].passed and control_after == control_before
    steps[-1].expected += " (unchanged)"
    ask(6, "paraphrase of fact 1", PARAPHRASE, "Qi")
    second = editor.learn(SECOND, key="paper-2", verify=False)
    ask(7, "after learning fact 2", SECOND.query, "PKU Science Park")
    ask(8, "fact 1 again, after fact 2", FIRST.query, "Qi")
    for result in (second, first):
        editor.remove(result.key)
    return steps


def steps_as_dicts(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]


def format_table(steps: list[Step]) -> str:
    """A markdown table: step, query, answer, expected, pass/FAIL."""
    rows = ["| step | query | answer | expected | result |", "|---|---|---|---|---|"]
    for s in steps:
        answer = s.answer.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {s.step} {s.description} | {s.query} | {answer} | {s.expected} | {'pass' if s.passed else 'FAIL'} |")
    return "\n".join(rows)
