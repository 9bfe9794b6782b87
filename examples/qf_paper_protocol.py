"""The QF paper's Table 1 protocol (8 steps) on the embedded default model.

    python examples/qf_paper_protocol.py [--model qwen2.5-coder-0.5b] [--layer 23]

Same as `qf bench paper`; shown here as plain library use.
"""

import argparse

from bench.paper import format_table, run_paper_protocol
from memory.answering import PAPER_RULE
from memory.consolidate import EditorConfig, QFEditor
from memory.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name, HF directory or hub id")
    parser.add_argument("--layer", type=int, default=None, help="layer to edit (default: the last)")
    args = parser.parse_args()
    editor = QFEditor(load_model(args.model), EditorConfig(layer=args.layer, **PAPER_RULE))  # the paper's exact rule
    steps = run_paper_protocol(editor)
    print(format_table(steps))
    print(f"\n{sum(s.passed for s in steps)}/8 steps passed ({editor.loaded.name}, layer {editor.layer})")


if __name__ == "__main__":
    main()
