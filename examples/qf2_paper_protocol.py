"""The QF2 paper's Table 1 protocol (8 steps) on a QFt-converted model.

    qf convert --model qwen2.5-coder-0.5b --out qwen-0.5b-qf2      # once
    python examples/qf2_paper_protocol.py --model qwen-0.5b-qf2 [--rule paper|delta|solve] [--lr 4e-4]

Same as `qf bench paper --method qf2`; shown here as plain library use. The paper's Hebbian rule
unless --rule says otherwise (`solve`, the library's default, passes 5/8 on the last-layer 0.5B
conversion; see docs/QF2.md).
"""

import argparse

from bench.paper import QF2_PROTOCOL, format_table, run_paper_protocol
from memory.consolidate import EditorConfig
from memory.loading import load_model
from memory.qf2 import DEFAULT_QF2_LR, QF2_RULES
from memory.qf2_editor import QF2Editor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a converted model: its name under $QF_HOME/models, or a directory")
    parser.add_argument("--rule", choices=QF2_RULES, default="paper", help="the QF2 update rule (memory.qf2)")
    parser.add_argument("--lr", type=float, default=DEFAULT_QF2_LR, help="the learning rate of the paper and delta rules")
    args = parser.parse_args()
    editor = QF2Editor(load_model(args.model), EditorConfig(lr=args.lr, qf2_rule=args.rule))
    steps = run_paper_protocol(editor, QF2_PROTOCOL)
    print(format_table(steps))
    print(f"\n{sum(s.passed for s in steps)}/8 steps passed ({editor.loaded.name}, QF2 at layer {editor.layer})")


if __name__ == "__main__":
    main()
