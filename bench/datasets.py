"""Editing benchmarks read by path: CounterFact (EasyEdit layout) and zsRE (MEND layout).

Both become a list of ``EditCase``: the prompt to edit, the new target, the old answer, one
paraphrase and one neighbourhood prompt with its answer. Nothing is copied into the repo; the
files are read where they lie. A malformed record is reported with its index and skipped.

CounterFact (EasyEdit): ``prompt``, ``subject``, ``target_new``, ``ground_truth``,
``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``.
zsRE (MEND): ``src`` (question), ``alt`` (new answer), ``answers`` (old answers), ``rephrase``,
``loc`` / ``loc_ans`` (a Natural Questions neighbour, kept verbatim with its "nq question: "
prefix, as ROME/MEMIT evaluate it).

How an edit is *stated* (the fact's instruction, used by QF's instructed pass and left in
context by ICL):
- ``plain`` template (the field's standard): "prompt target_new." for both families;
- ``chat`` template: CounterFact "prompt target_new." (already a sentence); zsRE the declarative
  'The answer to "src" is alt.' (a question followed by a bare answer reads as an unfinished
  quiz, not a fact; the declarative form names both the question and the new answer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from memory.generate import stop_ids
from memory.packing import template_prefix
from memory.prompts import answer_ids, instructed_system, render_prompt

log = logging.getLogger(__name__)

FORMATS = ("auto", "counterfact", "zsre")
TEMPLATES = ("plain", "chat")

_FIELDS = {
    "counterfact": ("prompt", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth"),
    "zsre": ("src", "alt", "answers", "rephrase", "loc", "loc_ans"),
}


@dataclass(frozen=True)
class EditCase:
    index: int  # position of the record in the file
    family: str  # "counterfact" | "zsre"
    subject: str
    prompt: str  # CounterFact prompt / zsRE question
    target_new: str
    ground_truth: str  # CounterFact ground_truth / zsRE answers[0]
    paraphrase: str
    neighborhood: str  # CounterFact locality prompt / zsRE loc
    neighborhood_answer: str  # its answer (locality_ground_truth / loc_ans)
    instruction: str | None = None  # override of the default statement of the fact (tests)
    # another question about the same subject: the next case's prompt with this case's subject put in
    # for the next's (with_other_relations); None when either has no subject in its prompt
    other_relation: str | None = None


def instruction_for(case: EditCase, template: str) -> str:
    """The new fact as a sentence (see the module docstring for the choice per template)."""
    if case.instruction is not None:
        return case.instruction
    if template == "chat" and case.family == "zsre":
        return f'The answer to "{case.prompt}" is {case.target_new}.'
    return f"{case.prompt} {case.target_new}."


class MalformedRecord(ValueError):
    pass


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, list):  # some dumps keep one-element lists (rephrase, locality)
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise MalformedRecord(f"field {key!r} is missing or not a non-empty string")
    return value.strip()


def parse_counterfact(record: dict, index: int) -> EditCase:
    prompt = _text(record, "prompt")
    subject = record.get("subject") or ""
    if "{}" in prompt:  # ROME-style templated prompt
        if not subject:
            raise MalformedRecord("prompt has a '{}' placeholder but no subject")
        prompt = prompt.format(subject)
    return EditCase(
        index=index, family="counterfact", subject=str(subject), prompt=prompt,
        target_new=_text(record, "target_new"), ground_truth=_text(record, "ground_truth"),
        paraphrase=_text(record, "rephrase_prompt"), neighborhood=_text(record, "locality_prompt"),
        neighborhood_answer=_text(record, "locality_ground_truth"),
    )


def parse_zsre(record: dict, index: int) -> EditCase:
    return EditCase(
        index=index, family="zsre", subject=str(record.get("subject") or ""), prompt=_text(record, "src"),
        target_new=_text(record, "alt"), ground_truth=_text(record, "answers"),
        paraphrase=_text(record, "rephrase"), neighborhood=_text(record, "loc"),
        neighborhood_answer=_text(record, "loc_ans"),
    )


PARSERS = {"counterfact": parse_counterfact, "zsre": parse_zsre}


def detect_format(records: list) -> str:
    """The family whose fields the first well-formed-looking record has."""
    for record in records[:50]:
        if isinstance(record, dict):
            for family, fields in _FIELDS.items():
                if sum(f in record for f in fields) >= 4:
                    return family
    raise ValueError("cannot tell the data format from its records; pass --format counterfact or --format zsre")


def parse_records(
    records: list, fmt: str = "auto", limit: int | None = None, offset: int = 0
) -> tuple[list[EditCase], list[tuple[int, str]]]:
    """Cases from records ``offset``.. until ``limit`` well-formed ones; skipped = (index, reason)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    family = detect_format(records) if fmt == "auto" else fmt
    parse = PARSERS[family]
    cases: list[EditCase] = []
    skipped: list[tuple[int, str]] = []
    for index in range(offset, len(records)):
        if limit is not None and len(cases) >= limit:
            break
        record = records[index]
        try:
            if not isinstance(record, dict):
                raise MalformedRecord(f"a {type(record).__name__}, not an object")
            cases.append(parse(record, index))
        except MalformedRecord as exc:
            log.warning("skipping record %d: %s", index, exc)
            skipped.append((index, str(exc)))
    return with_other_relations(cases), skipped


def with_other_relations(cases: list[EditCase]) -> list[EditCase]:
    """Each case with ``other_relation``: the next case's prompt (the first's, for the last) asked of
    this case's subject. It asks the subject something else, so an edit should not make its answer
    the case's new target (the benchmark's ``subject_leak``). Unset where a subject is unknown or the
    next prompt does not name its own."""
    out = []
    for i, case in enumerate(cases):
        other = cases[(i + 1) % len(cases)]
        asks = bool(case.subject and other.subject and other.subject in other.prompt and len(cases) > 1)
        out.append(replace(case, other_relation=other.prompt.replace(other.subject, case.subject) if asks else None))
    return out


def _json_or_raw(line: str):
    """One JSON line; an unreadable line is kept as text and reported as malformed later."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return line


def load_records(path: str | Path) -> list:
    """A JSON array, or JSON lines."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no data file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [_json_or_raw(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("data") or data.get("records") or [data]
    if not isinstance(data, list):
        raise ValueError(f"{path} holds neither a JSON array nor JSON lines")
    return data


def read_cases(
    path: str | Path, fmt: str = "auto", limit: int | None = None, offset: int = 0
) -> tuple[list[EditCase], list[tuple[int, str]], str]:
    """Cases, skipped records (index, reason) and the family, from a file."""
    records = load_records(path)
    family = detect_format(records) if fmt == "auto" else fmt
    cases, skipped = parse_records(records, family, limit, offset)
    return cases, skipped, family


@dataclass(frozen=True)
class Poser:
    """How a case is put to the model as tokens, in one template.

    plain: the raw text (with the tokenizer's BOS if it adds one), the context as a preceding
    sentence, the answer as " answer" continuing the text.
    chat: the text as the user message of the chat template, the context appended to the system
    message (memory.prompts.instructed_system), the answer as the assistant's reply.
    """

    tokenizer: object
    template: str = "chat"
    system: str | None = None

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, not {self.template!r}")

    def prompt_ids(self, text: str, context: str | None = None) -> list[int]:
        if self.template == "chat":
            system = instructed_system(context, self.system) if context else self.system
            return render_prompt(self.tokenizer, text, system)
        return self.tokenizer(f"{context} {text}" if context else text).input_ids

    def answer_ids(self, answer: str) -> list[int]:
        if self.template == "chat":
            return answer_ids(self.tokenizer, answer)
        return self.tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids

    def stop_ids(self) -> list[int]:
        if self.template == "chat":
            return stop_ids(self.tokenizer)
        return [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]

    @property
    def shared_prefix(self) -> list[int]:
        """The tokens every prompt of this template begins with (the chat template's system turn; none,
        or the BOS, for plain text)."""
        return template_prefix(self.prompt_ids)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return 0 if pad is None else pad


def right_padded(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Teacher-forced batch of (prompt, continuation) pairs, right-padded.

    Returns input_ids (B, L), attention_mask (B, L) and, per pair, the positions whose
    next-token prediction is a continuation token (P-1 .. P+k-2).
    """
    seqs = [prompt + cont[:-1] for prompt, cont in pairs]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows = []
    for i, (s, (prompt, cont)) in enumerate(zip(seqs, pairs)):
        if not cont:
            raise ValueError("an empty continuation has nothing to score")
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        rows.append(list(range(len(prompt) - 1, len(prompt) - 1 + len(cont))))
    return ids, mask, rows
