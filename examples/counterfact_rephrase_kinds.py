"""How much of CounterFact's "generalization" is a paraphrase, and how each method does on each kind (issue 7).

    python examples/counterfact_rephrase_kinds.py docs/results/steer_counterfact_1000_1.5b.json.gz \\
        docs/results/subject_gate_u0.1_counterfact_1000_1.5b.json.gz docs/results/counterfact_1000_1.5b.json.gz

The dev set's ``rephrase_prompt`` is the prompt in other words for some records ("Michel Denisot
spoke the language" / "Michel Denisot's mother tongue is") and another question about the subject
for others ("The native language of Symeon of Polotsk is" / "Symeon of Polotsk was born in";
"The headquarter of Majorette is located in" / "The headquarters of Majorette is surrounded by
restaurants including"). docs/results/counterfact_rephrase_labels_300.json says which, for the
first 300 records (read pair by pair; how, in its ``about``). For each method of each
``qf bench edits`` result given (``--out`` JSON with per-case results), this prints the
teacher-forced generalization, the greedy paraphrase success where it was generated, and the
subject leak, over the labelled cases the run covers, split by kind.
"""

import argparse
import json
from pathlib import Path

from bench.result_files import read_result, result_name

LABELS = Path(__file__).resolve().parent.parent / "docs" / "results" / "counterfact_rephrase_labels_300.json"
KINDS = ("same", "other", "unclear")


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} ({len(values)})" if values else "-"


def rows_of(result: dict, labels: dict[int, str]) -> list[tuple[str, dict[str, list[float]]]]:
    """(method, {metric/kind: per-case values}) for the pre-edit model and each method of one result."""
    methods = ["pre", *result["methods"]]
    out = []
    for method in methods:
        values: dict[str, list[float]] = {}
        for case in result["cases"]:
            kind = labels.get(case["index"])
            scores = case.get(method)
            if kind is None or not isinstance(scores, dict):
                continue
            for metric in ("generalization", "paraphrase_success", "subject_leak"):
                # greedy success is there for the --gen-cases only; the leak where the case has another question
                if metric in scores and (metric != "subject_leak" or case.get("other_relation")):
                    values.setdefault(f"{metric}/{kind}", []).append(float(scores[metric]))
        out.append((method, values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="qf bench edits --out JSON files on CounterFact's dev set")
    parser.add_argument("--labels", default=str(LABELS))
    args = parser.parse_args()
    labels = {row["index"]: row["label"] for row in json.loads(Path(args.labels).read_text())["labels"]}
    counts = {kind: sum(1 for v in labels.values() if v == kind) for kind in KINDS}
    print(f"{len(labels)} labelled records: " + ", ".join(f"{counts[k]} {k}" for k in KINDS))
    print("| run | method | generalization: same | other | greedy paraphrase: same | other | subject leak |")
    print("|---|---|---|---|---|---|---|")
    for path in args.results:
        result = read_result(path)
        for method, v in rows_of(result, labels):
            leak = [value for kind in KINDS for value in v.get(f"subject_leak/{kind}", [])]
            print(f"| {result_name(path)} ({result['config']['edits']} edits) | {method} | "
                  f"{mean(v.get('generalization/same', []))} | {mean(v.get('generalization/other', []))} | "
                  f"{mean(v.get('paraphrase_success/same', []))} | {mean(v.get('paraphrase_success/other', []))} | "
                  f"{mean(leak)} |")


if __name__ == "__main__":
    main()
