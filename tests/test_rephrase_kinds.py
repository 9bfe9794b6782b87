"""examples/counterfact_rephrase_kinds.py: each metric is split by the rephrase's kind, greedy
success counted only where it was generated and the leak only where a case has another question;
and the shipped labels are well-formed and about the dev set's records."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "counterfact_rephrase_kinds.py"
DEV = ROOT.parent / "shared" / "data" / "counterfact" / "dev.json"


def load_script():
    spec = importlib.util.spec_from_file_location("counterfact_rephrase_kinds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def case(index: int, generalization: float, leak: float, greedy: float | None, other: bool = True) -> dict:
    scores = {"generalization": generalization, "subject_leak": leak}
    if greedy is not None:
        scores["paraphrase_success"] = greedy
    return {"index": index, "other_relation": "X is located in" if other else None, "pre": dict(scores), "qf": scores}


def test_metrics_split_by_kind():
    script = load_script()
    result = {"methods": ["qf"], "cases": [
        case(0, 1.0, 0.0, 1.0), case(1, 0.0, 1.0, None), case(2, 1.0, 1.0, 0.0, other=False), case(3, 1.0, 0.0, 1.0)]}
    labels = {0: "same", 1: "same", 2: "other"}  # case 3 has no label: left out
    rows = dict(script.rows_of(result, labels))
    qf = rows["qf"]
    assert qf["generalization/same"] == [1.0, 0.0] and qf["generalization/other"] == [1.0]
    assert qf["paraphrase_success/same"] == [1.0]  # case 1 was not generated
    assert qf["paraphrase_success/other"] == [0.0]
    assert "subject_leak/other" not in qf  # case 2 has no other question
    assert qf["subject_leak/same"] == [0.0, 1.0]
    assert set(rows) == {"pre", "qf"}


def test_shipped_labels_are_well_formed():
    script = load_script()
    labels = json.loads(script.LABELS.read_text())["labels"]
    assert [row["index"] for row in labels] == list(range(300))
    assert {row["label"] for row in labels} <= set(script.KINDS)
    if not DEV.exists():
        pytest.skip("the shared CounterFact dev set is not beside the project")
    records = json.loads(DEV.read_text())
    for row in labels:
        assert (row["prompt"], row["rephrase"]) == (records[row["index"]]["prompt"], records[row["index"]]["rephrase_prompt"])
