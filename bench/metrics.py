"""Editing metrics as the field names them: pure functions on logits, token ids and answers.

Teacher-forced scores come from one forward pass over ``prompt + continuation``: for each
continuation token t, the log-probability the model gives it and the model's top-1 token at the
position that predicts it (see docs/RESULTS.md for the definitions).

CounterFact (ROME/MEMIT): a case succeeds when the mean per-token log-probability of one answer
beats the other's — efficacy: target_new over ground_truth on the prompt; paraphrase: the same on
the paraphrase; neighborhood: ground_truth over target_new on the neighbourhood prompt.
zsRE (MEND/ROME): top-1 token accuracy of the new answer under teacher forcing on the question
(efficacy) and its rephrasing (generalization); specificity = agreement of the top-1 tokens on
the neighbourhood question with the pre-edit model's.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

HEADLINE = ("efficacy", "generalization", "specificity")
GENERATION = ("edit_success", "paraphrase_success", "neighborhood_unchanged", "edit_repeats")
CAPACITY_EFFICACY = 0.9  # issue 7's capacity: the facts one setting holds before efficacy drops below this


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one continuation (k tokens)."""

    targets: tuple[int, ...]
    logprobs: tuple[float, ...]  # log P(target_t | prompt, target_<t)
    argmax: tuple[int, ...]  # the model's top-1 token at each of those positions


def token_scores(logits: torch.Tensor, targets: Sequence[int]) -> TokenScores:
    """From the (k, V) logits at the positions predicting ``targets`` (k ids)."""
    targets = [int(t) for t in targets]
    if logits.shape[0] != len(targets):
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(targets)} targets")
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)]
    return TokenScores(tuple(targets), tuple(picked.tolist()), tuple(logits.argmax(-1).tolist()))


def mean_logprob(scores: TokenScores) -> float:
    """Mean per-token log-probability (ROME's length-normalized sequence score)."""
    return sum(scores.logprobs) / len(scores.logprobs)


def prefers(first: TokenScores, second: TokenScores) -> bool:
    """P(first) > P(second), length-normalized as ROME compares target_new with target_true."""
    return mean_logprob(first) > mean_logprob(second)


def top1_accuracy(scores: TokenScores) -> float:
    """Fraction of continuation tokens that are the model's top-1 prediction."""
    return sum(a == t for a, t in zip(scores.argmax, scores.targets)) / len(scores.targets)


def first_token_top1(scores: TokenScores) -> float:
    """1.0 if the continuation's first token is the model's top-1 prediction, else 0.0: whether the
    model would begin with it (the later tokens follow the first, which is given when they are scored)."""
    return float(scores.argmax[0] == scores.targets[0])


def agreement(post: Sequence[int], pre: Sequence[int]) -> float:
    """Fraction of positions whose top-1 token is unchanged (same length sequences)."""
    if len(post) != len(pre):
        raise ValueError("agreement needs top-1 tokens at the same positions")
    return sum(a == b for a, b in zip(post, pre)) / len(pre)


def mentions(answer: str, target: str) -> bool:
    """Whole-word, case-insensitive containment of ``target`` in ``answer``."""
    return times_named(answer, target) > 0


def times_named(answer: str, target: str) -> int:
    """How many times ``answer`` names ``target`` (whole words, case-insensitive, not overlapping)."""
    return len(re.findall(rf"(?<!\w){re.escape(target.strip())}(?!\w)", answer, flags=re.IGNORECASE))


def repeats(answer: str, target: str) -> bool:
    """Whether ``answer`` names ``target`` twice in a row (whole words, case-insensitive, only spaces and
    commas between): "football football", "Hamas, Hamas", not "Sheffield. Sheffield is". The sign of a
    fact that fires again on its own answer, which ``mentions`` counts as a success."""
    word = re.escape(target.strip())
    return re.search(rf"(?<!\w){word}[\s,]*{word}(?!\w)", answer, flags=re.IGNORECASE) is not None


def harmonic_mean(values: Sequence[float]) -> float:
    """0 when any value is 0 (ROME's 'Score' of efficacy, paraphrase and neighborhood)."""
    if any(v <= 0 for v in values):
        return 0.0
    return statistics.harmonic_mean(values)


def relative_norm(weight: torch.Tensor, base: torch.Tensor) -> float:
    """||W - W0||_F / ||W0||_F, in float64."""
    base64 = base.detach().double().cpu()
    return float(torch.linalg.norm(weight.detach().double().cpu() - base64) / torch.linalg.norm(base64))


def counterfact_case(scores: dict[str, TokenScores]) -> dict[str, float]:
    """Efficacy / paraphrase / neighborhood success of one CounterFact case (0 or 1 each)."""
    return {
        "efficacy": float(prefers(scores["prompt_new"], scores["prompt_true"])),
        "generalization": float(prefers(scores["paraphrase_new"], scores["paraphrase_true"])),
        "specificity": float(prefers(scores["neighborhood_true"], scores["neighborhood_new"])),
        "efficacy_accuracy": top1_accuracy(scores["prompt_new"]),
    }


def zsre_case(scores: dict[str, TokenScores], pre: dict[str, TokenScores]) -> dict[str, float]:
    """Token accuracies of one zsRE case; specificity against the pre-edit top-1 tokens."""
    return {
        "efficacy": top1_accuracy(scores["prompt_new"]),
        "generalization": top1_accuracy(scores["paraphrase_new"]),
        "specificity": agreement(scores["neighborhood_answer"].argmax, pre["neighborhood_answer"].argmax),
        "neighborhood_accuracy": top1_accuracy(scores["neighborhood_answer"]),
    }


def generation_case(answers: dict[str, tuple[int, ...]], texts: dict[str, str], pre_answers: dict, target: str) -> dict:
    """Greedy answers: edit / paraphrase contain the target; neighbourhood answer unchanged; the edit's
    answer repeats the target twice in a row."""
    return {
        "edit_success": float(mentions(texts["prompt"], target)),
        "edit_repeats": float(repeats(texts["prompt"], target)),
        "paraphrase_success": float(mentions(texts["paraphrase"], target)),
        "neighborhood_unchanged": float(tuple(answers["neighborhood"]) == tuple(pre_answers["neighborhood"])),
    }


def aggregate(cases: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of every per-case metric over the cases that have it (greedy answers may be limited to
    the first cases), plus the harmonic mean of the three headline ones."""
    if not cases:
        return {}
    keys = list(dict.fromkeys(k for c in cases for k in c))
    out = {k: statistics.fmean(c[k] for c in cases if k in c) for k in keys}
    if all(k in out for k in HEADLINE):
        out["harmonic_mean"] = harmonic_mean([out[k] for k in HEADLINE])
    return out


def capacity(curve: Sequence[dict], threshold: float = CAPACITY_EFFICACY) -> dict:
    """How many sequential edits a setting holds, read off its curve (points of ``edits`` so far and
    the ``efficacy`` of the cases edited by then): ``held`` = the last point up to which every
    point's efficacy is at least ``threshold`` (0 when the first is below it), ``broke`` = the first
    point below it (None when none is). A bracket, as fine as the curve's points."""
    held, broke = 0, None
    for point in sorted(curve, key=lambda p: p["edits"]):
        if point["efficacy"] < threshold:
            broke = point["edits"]
            break
        held = point["edits"]
    return {"threshold": threshold, "held": held, "broke": broke}
