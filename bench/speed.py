"""Speed of one consolidation against one forward pass, and of the joint re-solve.

Per fact: the two capture passes (packed into one forward pass, memory.packing) with the subject key and the row gains
read off the head, the fact's neurons or residual added (with its answer states), the solve, the
write, and one full forward pass over the instructed sequence (with logits, as inference runs it); medians over
facts. Then the joint re-solve of ``resolve_facts`` facts from the base model with no forward pass,
as a ledger's load does: its cost depends on the shapes (rows x D), so those facts reuse the captured
rows' shapes with random values (random keys are far apart: every gated neuron is alone).
"""

from __future__ import annotations

import statistics
import time

import torch

from memory.consolidate import QFEditor
from memory.fact import Fact, FactRows
from memory.gated import GatedMemory
from memory.joint import JointQF
from memory.prompts import build_pass, instructed_system

SUBJECTS = [
    "Oxinnovate", "Brightlane", "Corvexa", "Duneward", "Elmstone", "Fennick Labs", "Glaswing", "Harrowgate",
    "Isoptra", "Jovial Systems", "Kestrelite", "Lumenfall", "Moravia Tech", "Northpike", "Orrisync", "Pellucid",
]
FOUNDERS = ["Qi", "Ana Ruiz", "Tom Berg", "Lena Fox", "Omar Haddad", "Mei Lin", "Raj Patel", "Sofia Moreau"]


def synthetic_facts(n: int) -> list[Fact]:
    """n distinct facts with given answers and subjects, e.g. 'Qi started Oxinnovate.' about Oxinnovate."""
    facts = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)] + ("" if i < len(SUBJECTS) else f" {i // len(SUBJECTS) + 1}")
        founder = FOUNDERS[i % len(FOUNDERS)]
        facts.append(Fact(f"{founder} started {subject}.", f"Who founded {subject}?", f"{subject} was founded by {founder}.",
                          subject=subject))
    return facts


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@torch.no_grad()
def run_speed(editor: QFEditor, n: int = 8, resolve_facts: int = 100, progress=None) -> dict:
    """Medians over ``n`` real consolidations, then the joint re-solve of ``resolve_facts`` facts."""
    capture, add, solve, apply, forward, rows = [], [], [], [], [], []
    device = editor.loaded.device
    editor.ask("warm up", max_new_tokens=1)
    keys = []
    for i, fact in enumerate(synthetic_facts(n)):
        inst = build_pass(editor.tokenizer, fact.query, fact.answer, instructed_system(fact.instruction, editor.config.system))
        _, t_forward = _timed(lambda: editor.model(input_ids=inst.input_ids.to(device), use_cache=False))
        fact_rows, t_capture = _timed(lambda: editor.joint.with_gains(editor.capture(fact)))  # + the row gains
        keys.append(("speed", i))
        _, t_add = _timed(lambda: editor.add_rows(keys[-1], fact_rows))
        solved, t_solve = _timed(editor.solve)  # the default's gated neurons, or down_proj's delta with --gate 0
        _, t_apply = _timed(lambda: editor.write_solved(solved))
        for series, value in zip((capture, add, solve, apply, forward), (t_capture, t_add, t_solve, t_apply, t_forward)):
            series.append(value)
        rows.append(fact_rows.num_rows)
        if progress:
            progress(1)
    for key in keys:
        editor.drop(key)
    editor.rebuild()
    med = statistics.median
    consolidation = [sum(steps) for steps in zip(capture, add, solve, apply)]
    return {
        "facts": n,
        "rows_per_fact": med(rows),
        "capture_s": med(capture),
        "add_s": med(add),
        "solve_s": med(solve),
        "apply_s": med(apply),
        "consolidation_s": med(consolidation),
        "forward_s": med(forward),
        "ratio": med(consolidation) / med(forward),
        **resolve_time(editor, resolve_facts, int(med(rows))),
    }


def resolve_time(editor: QFEditor, facts: int, rows_per_fact: int) -> dict:
    """Load (residuals from stored rows), re-solve and write ``facts`` facts from the base model, as a
    ledger's load does: into gated neurons (the default) or down_proj's joint delta (--gate 0). The
    rows carry their recorded gains (1) and steering (none), as a ledger's do, so no head is read, and
    with a subject gate a subject key each (random: every fact about a subject of its own), and a random
    subject mean with the subject-centered gate; with an answer gate their answer states are computed
    from the rows, as a load does."""
    W0 = editor.joint.W0
    N, D = W0.shape
    g = torch.Generator().manual_seed(0)
    stored = [
        FactRows("", (), *(torch.randn(rows_per_fact, d, generator=g) for d in (D, N, D, N)),
                 torch.ones(rows_per_fact, dtype=torch.float64), gains=torch.ones(rows_per_fact, dtype=torch.float64),
                 gains_max=editor.joint.max_row_gain, steer_margin=editor.joint.steer_margin,
                 steer=torch.zeros(rows_per_fact, N) if editor.joint.steer_margin else None,
                 subject_key=torch.randn(N, generator=g) if editor.config.subject_gate else None,
                 subject_mean=torch.randn(N, generator=g) if editor.config.subject_centered else None)
        for _ in range(facts)
    ]
    if editor.gated is not None:
        solver = GatedMemory(N, editor.gated.tau, tau_named=editor.gated.tau_named, answer_tau=editor.gated.answer_tau,
                             answer_mean=editor.gated.answer_mean, prime=editor.gated.prime,
                             subject_centered=editor.gated.subject_centered)

        def add(i, rows):
            solver.add(i, rows.V_plain, editor.joint.residual(rows).T, rows.significance, subject_key=rows.subject_key,
                       answer_states=editor.answer_states(rows), subject_mean=rows.subject_mean)
    else:
        solver = JointQF(W0, editor.parameter, ridge=editor.config.ridge)
        add = solver.add
    start = time.perf_counter()
    for i, rows in enumerate(stored):
        add(i, rows)
    loaded = time.perf_counter()
    solved = solver.solve()
    solved_at = time.perf_counter()
    editor.write_solved(solved)
    written = time.perf_counter()
    editor.rebuild()  # back to the editor's own facts
    return {
        "resolve_facts": facts,
        "resolve_rows": solver.num_rows,
        "resolve_load_s": loaded - start,
        "resolve_solve_s": solved_at - loaded,
        "resolve_write_s": written - solved_at,
        "resolve_s": written - loaded,
    }
