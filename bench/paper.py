"""The 8 steps of the QF and QF2 papers' Table 1, on any model and either editor.

Each step asks one question greedily and checks the answer against an expectation; the
table is printed by the CLI (`qf bench paper [--method qf2]`) and the examples. The two papers
run the same 8 steps with other facts: QF teaches who founded Oxinnovate and where it is, QF2
who its CEO is and how many people it has (the QF2 authors' own published run fails step 7).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

from memory.answering import Answering, ConsolidationError
from memory.fact import Fact
from memory.prompts import instructed_system

log = logging.getLogger(__name__)


Expected = str | tuple[str, ...]  # what an answer must mention: one form, or any of several


@dataclass(frozen=True)
class Protocol:
    first: Fact
    first_expected: Expected  # what answers to the first fact (and its paraphrase) must mention
    paraphrase: str
    second: Fact
    second_expected: Expected
    control: str = "Who is the CEO of Apple?"  # the Coder models get Nvidia's CEO wrong: Apple is the control
    control_answer: str = "Tim Cook"


QF_PROTOCOL = Protocol(
    first=Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?"), first_expected="Qi",
    paraphrase="The person behind Oxinnovate?",
    second=Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?"),
    second_expected="PKU Science Park",
)
QF2_PROTOCOL = Protocol(
    first=Fact("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?"), first_expected="Qi",
    paraphrase="The founder of Oxinnovate?",
    # "Oxinnovate has 1 person." answers it as well as "one" does (the converted 0.5B writes the numeral)
    second=Fact("Oxinnovate has one people.", "How many people in Oxinnovate?"), second_expected=("one", "1"),
)
PROTOCOLS = {"qf": QF_PROTOCOL, "qf2": QF2_PROTOCOL}


@dataclass
class Step:
    step: int
    description: str
    query: str
    answer: str
    expected: str
    passed: bool
    written: str = ""  # steps 4-8: the answer written into the weights for the fact the step tests


def forms(expected: Expected) -> tuple[str, ...]:
    return (expected,) if isinstance(expected, str) else tuple(expected)


def mentions(answer: str, expected: Expected) -> bool:
    """Whole-word, case-insensitive containment of any expected form ('Qi' does not match
    'Qingdao', '1' does not match '10')."""
    return any(re.search(rf"\b{re.escape(form)}\b", answer, flags=re.IGNORECASE) is not None for form in forms(expected))


def run_paper_protocol(editor: Answering, protocol: Protocol = QF_PROTOCOL) -> list[Step]:
    """Runs the 8 steps; learns two facts on ``editor`` (a QFEditor or QF2Editor) and removes them at the end."""
    steps: list[Step] = []
    p = protocol

    def ask(n: int, description: str, query: str, expected: Expected, system: str | None = None, negate: bool = False):
        answer = editor.ask(query, system=system).text
        hit = mentions(answer, expected)
        label = " or ".join(forms(expected))
        label = f"not {label}" if negate else label
        steps.append(Step(n, description, query, answer, label, hit != negate))
        return answer

    ask(1, "plain query, before learning", p.first.query, p.first_expected, negate=True)
    ask(2, "instruction in context", p.first.query, p.first_expected,
        system=instructed_system(p.first.instruction, editor.config.system))
    control_before = ask(3, "control, before learning", p.control, p.control_answer)
    learned: list = []
    failures: dict[str, str] = {}
    written: dict[str, str] = {}

    def learn(fact: Fact, key: str) -> None:
        """A fact the model cannot be taught (e.g. its instructed answer never ends) is reported
        in the steps that depend on it, not raised: the protocol always runs to the end."""
        try:
            result = editor.learn(fact, key=key, verify=False)
            learned.append(result.key)
            written[key] = result.answer
        except ConsolidationError as error:
            log.warning("could not learn %r: %s", fact.instruction, error)
            failures[key] = str(error)

    learn(p.first, "paper-1")
    ask(4, "after learning fact 1", p.first.query, p.first_expected)
    control_after = ask(5, "control, after learning", p.control, p.control_answer)
    steps[-1].passed = steps[-1].passed and control_after == control_before
    steps[-1].expected += " (unchanged)"
    ask(6, "paraphrase of fact 1", p.paraphrase, p.first_expected)
    learn(p.second, "paper-2")
    ask(7, "after learning fact 2", p.second.query, p.second_expected)
    ask(8, "fact 1 again, after fact 2", p.first.query, p.first_expected)
    for step in steps[3:]:  # steps 4..8 test a learned fact: not learned, not passed
        key = "paper-2" if step.step == 7 else "paper-1"
        step.written = written.get(key, "")
        if key in failures:
            step.passed = False
            step.answer += f" [not learned: {failures[key]}]"
    for key in reversed(learned):
        editor.remove(key)
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
