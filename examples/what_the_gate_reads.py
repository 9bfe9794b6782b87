"""What the default gate reads for the chat questions of examples/same_subject_questions.py (issue 7).

    python examples/what_the_gate_reads.py --model qwen2.5-coder-1.5b

Under the default a fact's neuron fires at a position once the fact's subject has been named
(memory.subject_gate: some position so far within cosine 0.8 of the subject key, layer 1's state at
the subject's last token in the fact's query) and then by how close the position's MLP input is to
the neuron's key: ``a = relu(cos - 0.85) / 0.15`` (memory.gated). For each question and each fact
with a subject this prints both readings where the answer begins (the first answer row's key is
the fact query's MLP input there, before any fact is learned) and the activation the first row's
neuron would get. Numbers: docs/RESULTS.md, "What CounterFact's generalization measures".
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from same_subject_questions import FACTS, QUESTIONS  # noqa: E402

from memory import architecture as arch  # noqa: E402
from memory.anchors import guess_subject  # noqa: E402
from memory.gated import DEFAULT_THRESHOLD, gate  # noqa: E402
from memory.loading import load_model  # noqa: E402
from memory.prompts import render_prompt  # noqa: E402
from memory.subject_gate import SUBJECT_LAYER, SUBJECT_MATCH, subject_key, subject_position, subject_states  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    mlp_in: list[torch.Tensor] = []
    last = arch.decoder_layers(model)[arch.num_layers(model) - 1]
    last.mlp.register_forward_pre_hook(lambda m, a: mlp_in.append(a[0][0, -1].float()))

    @torch.no_grad()
    def read(question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The subject layer's states (P, N) and the answer start's unit MLP input (N,)."""
        mlp_in.clear()
        out = model(input_ids=torch.tensor([render_prompt(tok, question, None)]), output_hidden_states=True)
        return subject_states(model, out.hidden_states[SUBJECT_LAYER][0]), mlp_in[-1] / mlp_in[-1].norm()

    facts = []
    for instruction, query in FACTS:
        subject = guess_subject(instruction, query)
        ids = render_prompt(tok, query, None)
        at = subject_position(tok, ids, subject) if subject else None
        if at is not None:
            facts.append((query, subject, subject_key(model, ids, at), read(query)[1]))
    heads = [f"{subject!r} ({query}): subject match / answer key / a" for query, subject, _, _ in facts]
    print("| question | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(facts))
    for question in QUESTIONS:
        states, x = read(question)
        cells = []
        for _, _, key, fact_x in facts:
            match, cos = float((states @ key).max()), float(x @ fact_x)
            a = float(gate(torch.tensor(cos), DEFAULT_THRESHOLD)) if match >= SUBJECT_MATCH else 0.0
            cells.append(f"{match:.2f} / {cos:.3f} / {a:.2f}")
        print(f"| {question} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
