"""The QF2 paper's Table 1 protocol (8 steps) on a QFt-converted model.

    qf convert --model qwen2.5-coder-0.5b --out qwen-0.5b-qf2      # once
    python examples/qf2_paper_protocol.py --model qwen-0.5b-qf2 [--lr 4e-4]

Same as `qf bench paper --method qf2`; shown here as plain library use.
"""

import argparse

from bench.paper import QF2_PROTOCOL, format_table, run_paper_protocol
from memory.consolidate import EditorConfig
from memory.loading import load_model
from memory.qf2 import DEFAULT_QF2_LR
from memory.qf2_editor import QF2Editor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a converted model: its name under $QF_HOME/models, or a directory")
    parser.add_argument("--lr", type=float, default=DEFAULT_QF2_LR, help="the QF2 learning rate")
    args = parser.parse_args()
    editor = QF2Editor(load_model(args.model), EditorConfig(lr=args.lr))
    steps = run_paper_protocol(editor, QF2_PROTOCOL)
    print(format_table(steps))
    print(f"\n{sum(s.passed for s in steps)}/8 steps passed ({editor.loaded.name}, QF2 at layer {editor.layer})")


if __name__ == "__main__":
    main()
