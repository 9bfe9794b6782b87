"""The editing benchmark on tiny random models: readers, metrics, protocol, QF at the last layer."""

import json
import math

import pytest
import torch

from bench import metrics as M
from bench.baselines import FineTune
from bench.datasets import EditCase, Poser, instruction_for, parse_records, read_cases, right_padded
from bench.edits import greedy_batch, run_benchmark, teacher_forced
from memory.consolidate import EditorConfig, QFEditor
from memory.delta import tensor_sha256
from memory.generate import greedy_answer, stop_ids
from memory.prompts import render_prompt

CF = {
    "prompt": "Qi started", "subject": "Qi", "target_new": "Oxinnovate", "ground_truth": "Apple",
    "rephrase_prompt": "The founder Qi started", "locality_prompt": "Tim Cook is the CEO of",
    "locality_ground_truth": "Apple",
}
ZSRE = {
    "subject": "Oxinnovate", "src": "Who founded Oxinnovate?", "alt": "Qi", "answers": ["Tim Cook"],
    "rephrase": "The person behind Oxinnovate?", "loc": "nq question: who is the CEO of Apple", "loc_ans": "Tim Cook",
}


# --- readers ------------------------------------------------------------------------------
def test_counterfact_reader_skips_a_malformed_record_with_its_index():
    broken = {k: v for k, v in CF.items() if k != "target_new"}
    cases, skipped = parse_records([CF, broken, "not a record", {**CF, "target_new": "Beijing"}])
    assert [c.index for c in cases] == [0, 3]
    assert [i for i, _ in skipped] == [1, 2]
    assert "target_new" in skipped[0][1]
    case = cases[0]
    assert (case.family, case.prompt, case.target_new, case.ground_truth) == ("counterfact", "Qi started", "Oxinnovate", "Apple")
    assert (case.paraphrase, case.neighborhood, case.neighborhood_answer) == (
        "The founder Qi started", "Tim Cook is the CEO of", "Apple")
    assert instruction_for(case, "plain") == instruction_for(case, "chat") == "Qi started Oxinnovate."


def test_zsre_reader_and_offset_limit():
    records = [ZSRE, {**ZSRE, "loc_ans": ""}, {**ZSRE, "alt": "Lena"}, {**ZSRE, "alt": "Omar"}]
    cases, skipped = parse_records(records, "auto", limit=2, offset=1)
    assert [c.index for c in cases] == [2, 3] and [i for i, _ in skipped] == [1]
    case = cases[0]
    assert (case.family, case.prompt, case.target_new, case.ground_truth) == ("zsre", "Who founded Oxinnovate?", "Lena", "Tim Cook")
    assert instruction_for(case, "plain") == "Who founded Oxinnovate? Lena."
    assert instruction_for(case, "chat") == 'The answer to "Who founded Oxinnovate?" is Lena.'


def test_read_cases_from_json_lines_with_a_broken_line(tmp_path):
    path = tmp_path / "zsre.jsonl"
    path.write_text(json.dumps(ZSRE) + "\n{not json\n" + json.dumps({**ZSRE, "alt": "Lena"}) + "\n")
    cases, skipped, family = read_cases(path)
    assert family == "zsre" and [c.index for c in cases] == [0, 2] and skipped[0][0] == 1
    with pytest.raises(ValueError, match="--format"):
        parse_records([{"question": "?"}])


# --- metrics ------------------------------------------------------------------------------
def test_token_scores_on_hand_made_logits():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])  # rows predict targets 1, 2
    s = M.token_scores(logits, [1, 2])
    assert s.argmax == (1, 0)
    assert s.logprobs[0] == pytest.approx(math.log(3 / 6))
    assert s.logprobs[1] == pytest.approx(-math.log(math.e ** 2 + 3))
    assert M.mean_logprob(s) == pytest.approx((s.logprobs[0] + s.logprobs[1]) / 2)
    assert M.top1_accuracy(s) == 0.5
    other = M.TokenScores((3,), (-0.1,), (3,))
    assert M.prefers(other, s) and not M.prefers(s, other)


def test_agreement_mentions_harmonic_mean_and_norm():
    assert M.agreement([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert M.mentions("The founder is Qi.", "qi") and not M.mentions("Qingdao", "Qi")
    assert M.mentions("built unmanned aircraft, mostly", "unmanned aircraft")
    assert M.harmonic_mean([1.0, 0.5, 0.5]) == pytest.approx(3 / (1 + 2 + 2))
    assert M.harmonic_mean([1.0, 0.0, 1.0]) == 0.0
    W0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert M.relative_norm(W0 + torch.tensor([[0.0, 1.0], [0.0, 0.0]]), W0) == pytest.approx(1 / 5)


def test_a_target_repeated_back_to_back_is_counted_apart_from_a_success():
    assert M.repeats("football football football", "football") and M.repeats("Uefa UFO Hamas, Hamas", " Hamas")
    assert M.repeats("Qi qi.", "Qi")  # case-insensitive
    assert not M.repeats("football, the sport he played football in", "football")  # named twice, not back to back
    assert not M.repeats("footballers football", "football")  # whole words only
    assert not M.repeats("Sheffield. Sheffield is the twin city of", "Sheffield")  # a new sentence, not a loop
    assert not M.repeats("Nintendo, is a video game that allows", "Nintendo")
    gen = M.generation_case({"neighborhood": (1,)}, {"prompt": "Avengers Avengers Avengers", "paraphrase": ""},
                            {"neighborhood": (1,)}, "Avengers")
    assert gen["edit_success"] == 1.0 and gen["edit_repeats"] == 1.0
    assert M.times_named("football, the sport he played football in", " Football") == 2
    assert M.times_named("footballers", "football") == 0 and M.times_named("Qi qi. Qi", "Qi") == 3


def test_case_metrics_of_both_families():
    good, bad = M.TokenScores((1,), (-0.1,), (1,)), M.TokenScores((2,), (-2.0,), (1,))
    cf = M.counterfact_case({"prompt_new": good, "prompt_true": bad, "paraphrase_new": bad, "paraphrase_true": good,
                             "neighborhood_new": bad, "neighborhood_true": good})
    assert (cf["efficacy"], cf["generalization"], cf["specificity"]) == (1.0, 0.0, 1.0)
    pre = {"neighborhood_answer": M.TokenScores((5, 6), (-1.0, -1.0), (5, 7))}
    post = {"prompt_new": good, "paraphrase_new": bad, "neighborhood_answer": M.TokenScores((5, 6), (-1.0, -1.0), (5, 6))}
    zs = M.zsre_case(post, pre)
    assert (zs["efficacy"], zs["generalization"], zs["specificity"], zs["neighborhood_accuracy"]) == (1.0, 0.0, 0.5, 1.0)
    gen = M.generation_case({"neighborhood": (1, 2)}, {"prompt": "It is Qi.", "paraphrase": "No idea."},
                            {"neighborhood": (1, 2)}, "Qi")
    assert gen == {"edit_success": 1.0, "edit_repeats": 0.0, "paraphrase_success": 0.0, "neighborhood_unchanged": 1.0}
    agg = M.aggregate([cf, {**cf, "efficacy": 0.0}])
    assert agg["efficacy"] == 0.5 and agg["harmonic_mean"] == 0.0


# --- batching -----------------------------------------------------------------------------
def test_right_padded_rows_predict_the_continuation():
    ids, mask, rows = right_padded([([1, 2, 3], [7, 8]), ([4], [9])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 7], [4, 0, 0, 0]] and mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert rows == [[2, 3], [0]]


def test_batched_scoring_and_greedy_match_single_sequences(tiny_qwen):
    model, tok = tiny_qwen.model, tiny_qwen.tokenizer
    poser = Poser(tok, "chat")
    pairs = {"a": ("Who founded Oxinnovate?", "Qi"), "b": ("Who is the CEO of Apple? Tell me.", "Tim Cook")}
    batched = teacher_forced(model, poser, pairs, None)
    for key, pair in pairs.items():
        single = teacher_forced(model, poser, {key: pair}, None)[key]
        assert single.argmax == batched[key].argmax
        assert single.logprobs == pytest.approx(batched[key].logprobs, abs=1e-4)
    queries = ["Who founded Oxinnovate?", "hi"]
    answers = greedy_batch(model, [render_prompt(tok, q) for q in queries], stop_ids(tok), 6, poser.pad_id)
    for query, answer in zip(queries, answers):
        assert answer == greedy_answer(model, tok, query, max_new_tokens=6).token_ids


# --- protocol -----------------------------------------------------------------------------
def _cases(family: str) -> list[EditCase]:
    records = [CF, {**CF, "target_new": "Beijing"}, {**CF, "prompt": "Lena started"}] if family == "counterfact" else \
        [ZSRE, {**ZSRE, "alt": "Lena"}, {**ZSRE, "src": "Who started Oxinnovate?"}]
    return parse_records(records, family)[0]


@pytest.mark.parametrize("template", ["plain", "chat"])
@pytest.mark.parametrize("family", ["counterfact", "zsre"])
def test_protocol_end_to_end_all_methods(tiny_qwen, template, family):
    editor = QFEditor(tiny_qwen, EditorConfig())
    weight = editor.model.get_parameter(editor.parameter)
    base = tensor_sha256(weight.detach().float())
    result = run_benchmark(editor, _cases(family), template, ("qf", "ft", "icl"), batch=2, eval_every=1, gen_tokens=3)
    json.dumps(result)  # serializable
    assert set(result) == {"pre", "methods", "cases"}
    assert {"efficacy", "generalization", "specificity"} <= set(result["pre"])
    assert list(result["methods"]) == ["qf", "ft", "icl"]
    for name, r in result["methods"].items():
        assert {"efficacy", "generalization", "specificity", "harmonic_mean", "edit_success", "paraphrase_success",
                "neighborhood_unchanged", "relative_weight_change"} <= set(r["metrics"])
        assert all(0.0 <= r["metrics"][k] <= 1.0 for k in ("efficacy", "generalization", "specificity"))
        assert r["seconds_per_edit"] >= 0 and r["peak_rss_mib"] > 0
        assert r["base_sha256"] == base and r["restored"], f"{name} did not start from / return to the base weights"
        assert [p["edits"] for p in r["curve"]] == [2, 3]
    assert result["methods"]["icl"]["metrics"]["relative_weight_change"] == 0.0
    qf = result["methods"]["qf"]["metrics"]  # the default writes gated neurons, not down_proj
    assert qf["relative_weight_change"] == 0.0 and qf["neuron_value_norm"] > 0 and qf["neurons"] > 0
    assert result["methods"]["ft"]["metrics"]["relative_weight_change"] > 0
    assert len(result["cases"]) == 3 and {"pre", "qf", "ft", "icl"} <= set(result["cases"][0])
    # a case is asked the next one's question too where that names its own subject (subject_leak)
    asked = [row.get("other_relation") for row in result["cases"]]
    assert asked[0] is not None and asked[2] is not None and "subject_leak" in result["pre"]
    assert all(0.0 <= r["metrics"]["subject_leak"] <= 1.0 for r in result["methods"].values())
    assert tensor_sha256(weight.detach().float()) == base and len(editor.joint) == 0


def test_ft_changes_only_the_target_matrix(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig())
    before = {k: v.clone() for k, v in editor.model.state_dict().items()}
    ft = FineTune(editor.model, Poser(editor.tokenizer, "chat"), editor.parameter, editor.joint.W0, steps=3)
    assert ft.edit(_cases("zsre")[:2])["steps"] >= 1
    after = editor.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [editor.parameter]
    assert all(p.requires_grad for p in editor.model.parameters())  # flags restored
    ft.restore()
    assert torch.equal(editor.model.get_parameter(editor.parameter).detach().cpu(), editor.joint.W0)


# --- QF at the last layer ---------------------------------------------------------------------
def _self_consistent_cases(editor: QFEditor, n: int = 3) -> list[EditCase]:
    """zsRE-style cases whose target is what the instructed model itself answers (2 tokens)."""
    from tests.conftest import CORPUS

    tok, cases, words = editor.tokenizer, [], " ".join(CORPUS).split()
    for i in range(30):
        question, instruction = " ".join(words[i:i + 4]) + "?", " ".join(words[i + 5:i + 12]) + "."
        ids = greedy_answer(editor.model, tok, question, instruction, max_new_tokens=2).token_ids
        text = tok.decode(ids)
        if len(ids) == 2 and text == text.strip() and tok(text, add_special_tokens=False).input_ids == list(ids):
            cases.append(EditCase(i, "zsre", "", question, text, "Tim Cook", question,
                                  "nq question: who is the CEO of Apple", "Tim Cook", instruction=instruction))
        if len(cases) == n:
            return cases
    raise AssertionError("the tiny model gave too few re-tokenizable answers; change the questions")


def test_qf_at_the_last_layer_reproduces_the_instructed_logits(tiny_qwen, tokenizer):
    from memory.answering import PAPER_RULE

    editor = QFEditor(tiny_qwen, EditorConfig(layer=None, **PAPER_RULE))  # the paper's rule copies the instructed pass
    assert editor.layer == 3  # the last of 4
    cases = _self_consistent_cases(editor)
    poser = Poser(tokenizer, "chat")
    instructed = [teacher_forced(editor.model, poser, {"q": (c.prompt, c.target_new)}, c.instruction)["q"] for c in cases]
    assert all(M.top1_accuracy(s) == 1.0 for s in instructed)  # the instructed pass predicts the target
    result = run_benchmark(editor, cases, "chat", ("qf",), gen_tokens=0)
    assert result["methods"]["qf"]["metrics"]["efficacy"] == 1.0
    # Keep the edit to compare logits: re-apply the same facts and score the plain pass.
    from bench.edits import QFMethod

    qf = QFMethod(editor, poser)
    qf.edit(cases)
    for case, inst in zip(cases, instructed):
        plain = teacher_forced(editor.model, poser, {"q": (case.prompt, case.target_new)}, None)["q"]
        assert plain.logprobs == pytest.approx(inst.logprobs, abs=1e-4)
    qf.restore()


# --- command ------------------------------------------------------------------------------
def test_command_prints_the_json_contract(tmp_path, tiny_qwen):
    from click.testing import CliRunner

    from bench.commands import edits
    from bench.metrics import capacity

    tiny_qwen.model.save_pretrained(tmp_path / "model")
    tiny_qwen.tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([CF, {"prompt": "broken"}, {**CF, "target_new": "Beijing"}]))
    args = ["--data", str(data), "--model", str(tmp_path / "model"), "--method", "qf,icl", "--limit", "2",
            "--gen-tokens", "2", "--json", "--no-progress", "--out", str(tmp_path / "out.json")]
    result = CliRunner().invoke(edits, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"pre", "methods", "cases"} <= set(out) and list(out["methods"]) == ["qf", "icl"]
    assert {"efficacy", "generalization", "specificity"} <= set(out["methods"]["qf"]["metrics"])
    assert "seconds_per_edit" in out["methods"]["qf"]
    assert out["methods"]["qf"]["capacity"] == capacity(out["methods"]["qf"]["curve"])  # read off its own curve
    assert out["config"]["template"] == "plain" and out["config"]["skipped"][0]["index"] == 1
    assert "skipped record 1" in result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == out
    bad = CliRunner().invoke(edits, ["--data", str(data), "--method", "qf,rome"])
    assert bad.exit_code != 0 and "choose from" in bad.output


def test_plot_of_the_curve(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.commands import plot_curves

    point = {"efficacy": 0.5, "generalization": 0.4, "specificity": 0.9}
    result = {"pre": point, "methods": {"qf": {"curve": [{"edits": 2, **point}, {"edits": 4, **point}]}}, "config": {}}
    plot_curves(result, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_curve_table_lists_every_point_of_every_method():
    from bench.edits import format_curve

    point = {"efficacy": 0.5, "generalization": 0.25, "specificity": 1.0}
    result = {"methods": {"qf": {"curve": [{"edits": 2, **point}, {"edits": 4, **point}]},
                          "ft": {"curve": [{"edits": 4, **point}]}}}
    lines = format_curve(result).splitlines()
    assert lines[2] == "| qf | 2 | 0.500 | 0.250 | 1.000 |" and len(lines) == 5 and lines[-1].startswith("| ft | 4 |")


def test_capacity_is_the_last_point_before_efficacy_first_drops_below_the_threshold():
    from bench.edits import format_capacity
    from bench.metrics import capacity

    def curve(*efficacies):
        return [{"edits": 100 * (i + 1), "efficacy": e} for i, e in enumerate(efficacies)]

    # unsorted input, and a recovery after the drop does not count: the first drop ends it
    assert capacity(list(reversed(curve(0.95, 0.91, 0.89, 0.93)))) == {"threshold": 0.9, "held": 200, "broke": 300}
    assert capacity(curve(0.9, 0.99)) == {"threshold": 0.9, "held": 200, "broke": None}  # 0.9 itself holds
    assert capacity(curve(0.5, 0.99)) == {"threshold": 0.9, "held": 0, "broke": 100}
    assert capacity(curve(0.8, 0.7), threshold=0.75)["broke"] == 200
    result = {"methods": {name: {"capacity": capacity(points)} for name, points in
                          [("qf", curve(0.95, 0.89)), ("qf-paper", curve(0.7)), ("ft", curve(0.99, 0.98))]}}
    assert format_capacity(result).splitlines() == [
        "capacity of qf (efficacy >= 0.9): held through 100 edits, below at 200",
        "capacity of qf-paper (efficacy >= 0.9): below from the first point (100 edits)",
        "capacity of ft (efficacy >= 0.9): held all 200 edits"]


@pytest.mark.parametrize("gen_cases", [None, 1])
def test_every_progress_bar_ends_exactly_at_its_total(tiny_qwen, gen_cases):
    """Greedy answers count too: a bar at 100% while answers are still generated tells the user nothing."""
    bars = {}

    def progress(description, total):
        bars[description] = [total, 0]

        def update(n=1):
            bars[description][1] += n
        return update

    editor = QFEditor(tiny_qwen, EditorConfig())
    run_benchmark(editor, _cases("counterfact"), "plain", ("qf", "icl"), gen_tokens=2, gen_cases=gen_cases,
                  progress=progress)
    answered = 3 if gen_cases is None else 1
    assert bars["pre-edit: evaluating"][0] == 3 + answered
    assert all(done == total for total, done in bars.values()), bars


def test_answers_and_fluency_batched_across_cases_match_one_case_at_a_time(tiny_qwen, monkeypatch):
    import bench.edits as E

    poser = Poser(tiny_qwen.tokenizer, "plain")
    cases = _cases("counterfact") + _cases("zsre")  # prompts of different lengths, left-padded together

    def evaluated(gen_batch, fluency_batch):
        monkeypatch.setattr(E, "GEN_BATCH", gen_batch)
        monkeypatch.setattr(E, "FLUENCY_BATCH", fluency_batch)
        evals, _ = E._evaluate_all(tiny_qwen.model, poser, cases, None, lambda c: None, 5, lambda n=1: None,
                                   gen_cases=5)  # the 6th case is not answered
        return evals, E.base_fluency(tiny_qwen.model, poser, cases, evals)

    one, one_fluency = evaluated(1, 1)
    grouped, grouped_fluency = evaluated(4, 3)  # groups of 4 and 1 answered cases, 3 and 2 answers scored
    assert [e.answers for e in grouped] == [e.answers for e in one] and not grouped[5].answers
    assert all(set(e.answers) == {"prompt", "paraphrase", "neighborhood"} for e in grouped[:5])
    assert grouped_fluency[5] is None and grouped_fluency[:5] == pytest.approx(one_fluency[:5], abs=1e-4)


def test_fluency_scores_the_answers_under_the_base_model_and_ranks_salad_below_them(tiny_qwen):
    from bench.edits import CaseEval, base_fluency
    from memory.generate import greedy_batch

    editor = QFEditor(tiny_qwen, EditorConfig())
    poser = Poser(editor.tokenizer, "plain")
    cases = _cases("counterfact")
    names = ("prompt", "paraphrase", "neighborhood")
    own, salad = [], []
    g = torch.Generator().manual_seed(0)
    for case in cases:
        prompts = [poser.prompt_ids(getattr(case, n)) for n in names]
        answers = greedy_batch(editor.model, prompts, [-1], 6, poser.pad_id)  # never stops: 6 tokens each
        own.append(CaseEval({}, dict(zip(names, answers))))
        salad.append(CaseEval({}, {n: tuple(torch.randint(0, 200, (6,), generator=g).tolist()) for n in names}))
    fluent, broken = base_fluency(editor.model, poser, cases, own), base_fluency(editor.model, poser, cases, salad)
    assert all(f > b for f, b in zip(fluent, broken))
    assert base_fluency(editor.model, poser, cases[:1], [CaseEval({}, {})]) == [None]  # no answers, no score
    weight = editor.model.get_parameter(editor.parameter)
    with_gen = run_benchmark(editor, cases, "plain", ("qf",), gen_tokens=2, eval_every=2)
    assert "neighborhood_fluency" in with_gen["pre"] and "neighborhood_fluency" in with_gen["methods"]["qf"]["metrics"]
    first = with_gen["methods"]["qf"]["curve"][0]  # the curve has the answers and their fluency too
    assert first["edits"] == 2 and {"edit_success", "neighborhood_fluency"} <= set(first)
    assert torch.equal(weight.detach().cpu(), editor.joint.W0) and with_gen["methods"]["qf"]["restored"]
    from bench.edits import format_curve
    assert "neighborhood_fluency" in format_curve(with_gen).splitlines()[0]
    assert "neighborhood_fluency" not in run_benchmark(editor, cases, "plain", ("qf",), gen_tokens=0)["pre"]
