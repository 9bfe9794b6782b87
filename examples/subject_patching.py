"""Where does the instructed pass carry a new fact? Activation patching on CounterFact (issue 7).

    python examples/subject_patching.py --model qwen2.5-coder-0.5b --limit 40     # 8.5 min on 2 cores

For each case, the plain prompt ("Danielle Darrieux's mother tongue is") is run with the residual
stream after decoder layer l replaced, at some of its positions, by the instructed pass's
("Danielle Darrieux's mother tongue is English. Danielle Darrieux's mother tongue is", aligned on
the shared suffix). A position set carries the fact at layer l when the patched plain pass then
prefers target_new to ground_truth (first token). Position sets: the last prompt token (QF's
first row), the subject's tokens, the subject's last token (MEMIT's key), all the query's tokens,
and all but the last. The result behind docs/RESULTS.md "Anchor rows": only sets with the last
token carry the fact, from the upper half of the network on; the subject's tokens never do.
"""

import argparse

import torch

from bench.datasets import read_cases
from memory import architecture as arch
from memory.loading import load_model


def run(model, ids: list[int], layers: list[int], patch: tuple[int, list[int], torch.Tensor] | None = None):
    """Next-token logits after ``ids`` and the residual after each of ``layers`` (patched as given)."""
    blocks, states, handles = arch.decoder_layers(model), {}, []
    for layer in layers:
        def hook(module, args, output, layer=layer):
            h = output[0] if isinstance(output, tuple) else output
            if patch and patch[0] == layer:
                h[0, patch[1]] = patch[2]
            states[layer] = h[0].clone()
        handles.append(blocks[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()
    return logits, states


def position_sets(tokenizer, prompt: str, subject: str, shared: int) -> dict[str, list[int]]:
    """The patched positions of the plain prompt, by name (only the ``shared`` last ones align)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    P, start = len(enc.input_ids), prompt.find(subject)
    stop = start + len(subject)
    subj = [i for i, (a, b) in enumerate(enc.offset_mapping) if a < stop and b > start and i >= P - shared]
    return {"last": [P - 1], "subject": subj, "subject_last": subj[-1:], "query": list(range(P - shared, P)),
            "query_but_last": list(range(P - shared, P - 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="../shared/data/counterfact/dev.json")
    parser.add_argument("--limit", type=int, default=40)
    args = parser.parse_args()
    loaded = load_model(args.model, dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    n = arch.num_layers(model)
    layers = sorted(range(n - 1, 0, -3))[-8:]  # every third layer down from the last (2, 5, ..., 23 on the 0.5B)
    cases, _, _ = read_cases(args.data, limit=args.limit)
    wins: dict[str, list[float]] = {}
    for case in cases:
        plain = tok(case.prompt).input_ids
        instructed = tok(f"{case.prompt} {case.target_new}. {case.prompt}").input_ids
        shared = next((k for k in range(len(plain)) if plain[-1 - k] != instructed[-1 - k]), len(plain))
        offset = len(instructed) - len(plain)
        new, old = tok(" " + case.target_new).input_ids[0], tok(" " + case.ground_truth).input_ids[0]
        logits, taught = run(model, instructed, layers)
        wins.setdefault("instructed (no patch)", []).append(float(logits[new] > logits[old]))
        logits, _ = run(model, plain, layers)
        wins.setdefault("plain (no patch)", []).append(float(logits[new] > logits[old]))
        for layer in layers:
            for name, positions in position_sets(tok, case.prompt, case.subject, shared).items():
                if positions:
                    values = taught[layer][[p + offset for p in positions]]
                    logits, _ = run(model, plain, layers, (layer, positions, values))
                    wins.setdefault(f"layer {layer:2d} {name}", []).append(float(logits[new] > logits[old]))
    for key, values in wins.items():
        print(f"{key:28s} {sum(values) / len(values):.3f}  (n={len(values)})")


if __name__ == "__main__":
    main()
