"""A small built-in QFt training corpus, so converting a model needs no data from elsewhere.

What the converted model must keep doing: answer what it knows, answer from the system prompt,
and say so when neither holds. Rows have the layout of company_iqa/train.jsonl.
"""

from __future__ import annotations

import random

NEED_MORE = "Need more information."
QUESTIONS = {  # attribute -> (question, the answer stating the value)
    "ceo": ("Who is the CEO of {c}?", "The CEO of {c} is {v}."),
    "founder": ("Who founded {c}?", "{c} was founded by {v}."),
    "headquarters": ("Where is {c} headquartered?", "{c} is headquartered in {v}."),
    "year": ("When was {c} founded?", "{c} was founded in {v}."),
    "product": ("What does {c} make?", "{c} makes {v}."),
}
KNOWN_FACTS = [  # (company, attribute, value): long-standing facts a base model knows
    ("Apple", "ceo", "Tim Cook"), ("Microsoft", "ceo", "Satya Nadella"), ("Nvidia", "ceo", "Jensen Huang"),
    ("Meta", "ceo", "Mark Zuckerberg"), ("Alphabet", "ceo", "Sundar Pichai"), ("Amazon", "founder", "Jeff Bezos"),
    ("Microsoft", "founder", "Bill Gates and Paul Allen"), ("Alibaba", "founder", "Jack Ma"),
    ("Google", "founder", "Larry Page and Sergey Brin"), ("Apple", "headquarters", "Cupertino, California"),
    ("Microsoft", "headquarters", "Redmond, Washington"), ("Amazon", "headquarters", "Seattle, Washington"),
    ("Samsung", "headquarters", "Suwon, South Korea"), ("Toyota", "headquarters", "Toyota City, Japan"),
    ("Apple", "year", "1976"), ("Microsoft", "year", "1975"), ("Amazon", "year", "1994"), ("Netflix", "year", "1997"),
    ("Boeing", "product", "airplanes"), ("Nvidia", "product", "graphics processors"),
]
_NAME_PARTS = (["Zen", "Orb", "Nova", "Quant", "Lumi", "Vex", "Tera", "Cyra", "Hexa", "Aero", "Flux", "Kyro"],
               ["trix", "ion", "ara", "ify", "logic", "works", "pulse", "grid", "loop", "nest"])
_PEOPLE = (["Maria", "Kenji", "Amara", "Lukas", "Priya", "Omar", "Elena", "Tomas", "Aisha", "Mei"],
           ["Lopez", "Tanaka", "Okafor", "Schmidt", "Sharma", "Haddad", "Rossi", "Novak", "Chen", "Silva"])
_VALUES = {
    "headquarters": ["Oslo, Norway", "Lisbon, Portugal", "Nairobi, Kenya", "Austin, Texas", "Prague, Czech Republic",
                     "Melbourne, Australia", "Toronto, Canada", "Seoul, South Korea"],
    "product": ["solar batteries", "delivery drones", "smart thermostats", "cloud security software", "lab robots",
                "electric scooters", "AI chips", "payroll software"],
}
_KINDS = {"instructed": 0.6, "known": 0.15, "unknown": 0.125, "insufficient": 0.125}


def _fictional_value(rng: random.Random, attribute: str) -> str:
    if attribute in ("ceo", "founder"):
        return f"{rng.choice(_PEOPLE[0])} {rng.choice(_PEOPLE[1])}"
    if attribute == "year":
        return str(rng.randint(1990, 2023))
    return rng.choice(_VALUES[attribute])


def _row(system: str, question: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def generate_corpus(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat rows, deterministic in ``seed``: known-company facts (empty system prompt),
    facts about fictional companies stated in the system prompt, and "Need more information."
    for a fictional company with no context or with a system prompt about something else."""
    rng = random.Random(seed)
    rows = []
    for kind in rng.choices(list(_KINDS), weights=list(_KINDS.values()), k=n):
        if kind == "known":
            company, attribute, value = rng.choice(KNOWN_FACTS)
            question, statement = QUESTIONS[attribute]
            rows.append(_row("", question.format(c=company), statement.format(c=company, v=value)))
            continue
        company = rng.choice(_NAME_PARTS[0]) + rng.choice(_NAME_PARTS[1])
        asked, stated = rng.sample(list(QUESTIONS), 2)
        question = QUESTIONS[asked][0].format(c=company)
        if kind == "instructed":
            statement = QUESTIONS[asked][1].format(c=company, v=_fictional_value(rng, asked))
            rows.append(_row(statement, question, statement))
        elif kind == "unknown":
            rows.append(_row("", question, NEED_MORE))
        else:
            context = QUESTIONS[stated][1].format(c=company, v=_fictional_value(rng, stated))
            rows.append(_row(context, question, NEED_MORE))
    return rows
