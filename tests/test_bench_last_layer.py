"""The cached last-layer scorer and the captures QF variants share: the same numbers, less work."""

import pytest
import torch

from bench import metrics as M
from bench.datasets import Poser, parse_records
from bench.edits import QFMethod, run_benchmark, scored_pairs, teacher_forced
from bench.last_layer import LastLayerScorer
from memory.consolidate import EditorConfig, QFEditor
from tests.test_bench_edits import CF, ZSRE


def _cases(family):
    records = [ZSRE, {**ZSRE, "alt": "Lena"}, {**ZSRE, "src": "Who started Oxinnovate?"}] if family == "zsre" else \
        [CF, {**CF, "target_new": "Beijing"}, {**CF, "prompt": "Lena started"}]
    return parse_records(records, family)[0]


def _tokens(poser, case):
    return {k: (poser.prompt_ids(p), poser.answer_ids(c)) for k, (p, c) in scored_pairs(case).items()}


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_cached_scores_equal_a_forward_pass_under_any_last_down_proj(tiny, template):
    editor = QFEditor(tiny, EditorConfig())
    poser = Poser(editor.tokenizer, template)
    scorer = LastLayerScorer(editor.model, editor.parameter, poser.shared_prefix)
    cases = _cases("counterfact")
    for case in cases:
        scorer.prepare(case.index, _tokens(poser, case))
    weight = editor.model.get_parameter(editor.parameter)
    generator = torch.Generator().manual_seed(0)
    for step in range(2):  # the base weights, then a large change of the matrix
        if step:
            with torch.no_grad():
                weight.add_(torch.randn(weight.shape, generator=generator) * weight.abs().mean() * 3)
        for case in cases:
            cached, full = scorer.scores(case.index), teacher_forced(editor.model, poser, scored_pairs(case), None)
            assert cached.keys() == full.keys()
            for name in full:
                assert cached[name].targets == full[name].targets
                assert cached[name].argmax == full[name].argmax
                assert cached[name].logprobs == pytest.approx(full[name].logprobs, abs=1e-4)


def test_the_scorer_refuses_another_matrix(tiny_qwen):
    with pytest.raises(ValueError, match="down_proj"):
        LastLayerScorer(tiny_qwen.model, "model.layers.0.mlp.down_proj.weight")


@pytest.mark.parametrize("family", ["zsre", "counterfact"])
def test_a_benchmark_scores_the_same_cached_or_not(tiny_qwen, family):
    editor = QFEditor(tiny_qwen, EditorConfig())
    runs = [run_benchmark(editor, _cases(family), "chat", ("qf", "ft"), eval_every=2, gen_tokens=0, cached_eval=cached)
            for cached in (True, False)]
    for name in ("qf", "ft"):
        cached, full = (r["methods"][name] for r in runs)
        for key in ("efficacy", "generalization", "specificity"):
            assert cached["metrics"][key] == pytest.approx(full["metrics"][key], abs=1e-9)
            assert [p[key] for p in cached["curve"]] == pytest.approx([p[key] for p in full["curve"]], abs=1e-9)


def test_variants_share_captures_and_still_differ_by_their_solve(tiny_qwen, monkeypatch):
    editor = QFEditor(tiny_qwen, EditorConfig())
    calls = []
    original = QFEditor.capture

    def counted(self, fact, answer=None):
        calls.append(fact.query)
        return original(self, fact, answer)

    monkeypatch.setattr(QFEditor, "capture", counted)
    cases = _cases("zsre")
    result = run_benchmark(editor, cases, "chat", ("qf-paper", "qf/p0/g1/t0", "qf/p0/g2/t0"), gen_tokens=0)
    assert len(calls) == len(cases)  # each fact captured once for the three variants
    paper, same, doubled = (result["methods"][n] for n in ("qf-paper", "qf/p0/g1/t0", "qf/p0/g2/t0"))
    assert paper["metrics"] == same["metrics"]
    assert doubled["metrics"]["relative_weight_change"] == pytest.approx(2 * paper["metrics"]["relative_weight_change"])
    assert all(r["seconds_per_edit"] > 0 for r in (paper, same, doubled))
    # Focus or automatic significance store their own decisions with the rows: never shared.
    shared = {}
    QFMethod(editor, Poser(editor.tokenizer, "chat"), shared).rows(cases[0])
    auto = QFMethod(QFEditor(tiny_qwen, EditorConfig(auto_significance=True)), Poser(editor.tokenizer, "chat"), shared)
    assert auto.captured is not shared and len(shared) == 1


def test_greedy_answers_for_the_first_cases_only(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig())
    result = run_benchmark(editor, _cases("zsre"), "chat", ("qf",), gen_tokens=2, gen_cases=1)
    records = [case["qf"] for case in result["cases"]]
    assert records[0]["answers"] and not records[1]["answers"] and not records[2]["answers"]
    metrics = result["methods"]["qf"]["metrics"]
    assert 0.0 <= metrics["edit_success"] <= 1.0 and "neighborhood_unchanged" in metrics


def test_aggregate_means_each_metric_over_the_cases_that_have_it():
    out = M.aggregate([{"efficacy": 1.0, "edit_success": 1.0}, {"efficacy": 0.0}, {"efficacy": 0.5}])
    assert out["efficacy"] == pytest.approx(0.5) and out["edit_success"] == 1.0
