"""How often each method's greedy answers repeat the new target twice in a row, from saved results, and how
often they name it twice or more anywhere.

    python examples/repeated_targets.py docs/results/centered_counterfact_1000_1.5b.json.gz ...

``qf bench edits`` counts a greedy answer as a success when it names the new target
(bench.metrics.mentions), so "football football football football" succeeds. Runs since
2026-12-07 also report ``edit_repeats`` (bench.metrics.repeats); this reads the same off the
answers saved in older result files, for the edited prompt and its paraphrase. Numbers:
docs/RESULTS.md, "1,000 CounterFact edits with the centered gate, and the repeated target".
"""

import argparse
from pathlib import Path

from bench.metrics import repeats, times_named
from bench.result_files import read_result, result_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | method | greedy edit answers that repeat the target | paraphrase answers that do "
          "| edit answers naming it twice or more |")
    print("|---|---|---|---|---|")
    for path in args.files:
        result = read_result(path)
        for method in ("pre", *result["methods"]):
            answered = [(case[method]["answers"], case["target_new"]) for case in result["cases"]
                        if case.get(method, {}).get("answers")]
            if not answered:
                continue
            edit = sum(repeats(a.get("prompt", ""), t) for a, t in answered)
            para = sum(repeats(a.get("paraphrase", ""), t) for a, t in answered)
            twice = sum(times_named(a.get("prompt", ""), t) >= 2 for a, t in answered)
            print(f"| {result_name(path)} | {method} | {edit}/{len(answered)} | {para}/{len(answered)} | {twice}/{len(answered)} |")


if __name__ == "__main__":
    main()
