"""What deciding a fact's row gains, and its steering, costs per fact, in one process (issue 7).

    python examples/gains_and_steering_cost.py --model qwen2.5-coder-1.5b

``qf bench speed`` times whole consolidations, whose two capture passes vary from run to run on a
shared CPU by more than the decision costs. This captures the speed benchmark's synthetic facts
once, then times ``JointQF.with_gains`` (the row gains read off the LM head, and with a steering
margin the steering too) for each fact under each margin in turn, interleaved, and prints the
median and mean seconds per fact.
"""

import argparse
import statistics
import time

from bench.speed import synthetic_facts
from memory.consolidate import EditorConfig, QFEditor
from memory.joint import JointQF
from memory.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 1.0], help="0 = row gains alone")
    args = parser.parse_args()
    editor = QFEditor(load_model(args.model), EditorConfig())
    rows = [editor.capture(fact) for fact in synthetic_facts(args.facts)]
    base = editor.joint
    joints = {m: JointQF(base.W0, base.parameter, head=base.head, max_row_gain=base.max_row_gain, steer_margin=m)
              for m in args.margins}
    seconds = {m: [] for m in args.margins}
    for _ in range(args.repeats):
        for fact_rows in rows:
            for margin, joint in joints.items():
                start = time.perf_counter()
                joint.with_gains(fact_rows)  # the rows carry no gains yet: decided anew each time
                seconds[margin].append(time.perf_counter() - start)
    print(f"{args.model}, {args.facts} facts x {args.repeats}, rows per fact "
          f"{statistics.median(r.num_rows for r in rows):g}, max row gain {base.max_row_gain:g}")
    for margin, times in seconds.items():
        label = "row gains alone" if not margin else f"row gains + steer {margin:g}"
        print(f"{label}: median {statistics.median(times):.3f} s, mean {statistics.mean(times):.3f} s per fact")


if __name__ == "__main__":
    main()
