"""Would a neuron gated on the cosine of the last MLP's input tell a paraphrase from a neighbour? (issue 7)

    python examples/gate_separation.py --model qwen2.5-coder-0.5b --data ../shared/data/zsre/dev.json --limit 100
    python examples/gate_separation.py --data ../shared/data/counterfact/dev.json --template plain --limit 200

A gated neuron (memory.gated) fires at a position when the cosine of its MLP input x with one of
a fact's row keys exceeds tau. For each of the first ``--limit`` cases this captures x (and the
input u of down_proj, for comparison) at the rows predicting the new answer after the fact's
prompt and after its paraphrase, and at the rows predicting the neighbour's answer after its
prompt, in one batched forward pass per 32 sequences, stopped at the last MLP. For each tau it
prints how often a paraphrase row fires its own fact's neuron (first row: the answering position;
all rows) and how often a neighbour row fires *any* of the cases' neurons (the neighbourhood is
then moved by whatever that neuron writes). "centered" subtracts the mean of the next ``--limit``
cases' neighbour rows before the cosine (a neuron with a bias could do that).
"""

import argparse

import torch

from bench.datasets import Poser, read_cases, right_padded
from memory import architecture as arch
from memory.capture import Capture
from memory.loading import load_model

TAUS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def rows_of(model, poser: Poser, names: list[str], pairs: list[tuple[list[int], list[int]]], batch: int = 32):
    """Per pair, the captured inputs of ``names`` at its continuation's rows -> [(rows, width) per name]."""
    out = []
    for start in range(0, len(pairs), batch):
        ids, mask, rows = right_padded(pairs[start:start + batch], poser.pad_id)
        with Capture(model, names, stop=True) as cap:
            cap.run(input_ids=ids, attention_mask=mask, use_cache=False)
        out += [[cap.inputs[name][i, r].float() for name in names] for i, r in enumerate(rows)]
    return out


def report(label: str, fact, para, nbhd, mean: torch.Tensor | None) -> None:
    def unit(v):
        v = v - mean if mean is not None else v
        return v / v.norm(dim=-1, keepdim=True)

    F, P = [unit(f) for f in fact], [unit(p) for p in para]
    keys = torch.cat(F)
    first = torch.tensor([float(f[0] @ p[0]) for f, p in zip(F, P)])
    every = torch.cat([(f * p).sum(-1) for f, p in zip(F, P) if f.shape == p.shape])
    nb_first = torch.stack([(unit(q)[0] @ keys.T).max() for q in nbhd])
    nb_every = (torch.cat([unit(q) for q in nbhd]) @ keys.T).max(-1).values
    print(f"\n{label}: mean cosine of a fact row and its paraphrase's, first row {first.mean():.3f}, all rows {every.mean():.3f}")
    print("| tau | paraphrase first row fires | paraphrase rows fire | neighbour first row fires any | neighbour rows fire any |")
    print("|---|---|---|---|---|")
    for tau in TAUS:
        print(f"| {tau} | {(first > tau).float().mean():.2f} | {(every > tau).float().mean():.2f} | "
              f"{(nb_first > tau).float().mean():.2f} | {(nb_every > tau).float().mean():.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="../shared/data/zsre/dev.json")
    parser.add_argument("--template", choices=("chat", "plain"), default="chat")
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, poser = loaded.model, Poser(loaded.tokenizer, args.template)
    last = arch.num_layers(model) - 1
    names = [arch.module_path(model, last, "up_proj"), arch.module_path(model, last, "down_proj")]  # x, u
    cases, _, _ = read_cases(args.data, limit=2 * args.limit)
    edited, held = cases[:args.limit], cases[args.limit:]

    def captured(field: str, answer: str, which) -> list:
        return rows_of(model, poser, names, [(poser.prompt_ids(getattr(c, field)), poser.answer_ids(getattr(c, answer)))
                                             for c in which])

    fact, para = captured("prompt", "target_new", edited), captured("paraphrase", "target_new", edited)
    nbhd = captured("neighborhood", "neighborhood_answer", edited)
    reference = captured("neighborhood", "neighborhood_answer", held)
    print(f"{len(edited)} cases of {args.data}, {loaded.name}, layer {last}, {args.template} template")
    for i, space in enumerate(("x, the MLP input (what --gate reads)", "u, the input of down_proj")):
        mean = torch.cat([r[i] for r in reference]).mean(0) if reference else None
        for centered in (False, True):
            if centered and mean is None:
                continue
            report(f"{space}{', centered' if centered else ''}", [r[i] for r in fact], [r[i] for r in para],
                   [r[i] for r in nbhd], mean if centered else None)


if __name__ == "__main__":
    main()
