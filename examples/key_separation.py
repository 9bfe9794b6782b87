"""How far apart are a fact's paraphrase and its neighbours in the keys QF writes at? (issue 7)

    python examples/key_separation.py --model qwen2.5-coder-0.5b --limit 200        # about 2 min on 2 cores

QF's update of down_proj at layer l is linear in the key, the input of down_proj at the last prompt
token. A one-row minimum-norm update in a metric M, ``dW = r z^T / (z^T k_f)`` with z = M^{-1} k_f,
moves any other prompt x by ``alpha_x r`` with

    alpha_x = k_f^T M^{-1} k_x / k_f^T M^{-1} k_f

so after the edit the paraphrase gets alpha_para of the fact's change and the neighbour (another
subject with the same relation and, in CounterFact, the same old answer) gets alpha_nbhd of it.
Generalization wants alpha_para near 1, specificity alpha_nbhd near 0; no choice of rows or ridge
for that one key changes the ratio. This script measures both at every layer, in the identity
metric and (``--metric``) in the editor's preserving metric at the edited layer, over CounterFact
cases, with an unrelated case's prompt as the baseline. With ``--anchors N`` also with the fact's
prompt asked of N other subjects held (memory.anchors): z is then k_f's part orthogonal to those
N keys (the hard anchors' solve for one fact), which shows how much of the key is the subject's. One
forward pass per prompt captures every layer's key.
"""

import argparse
import statistics

import torch

from bench.datasets import read_cases
from memory import architecture as arch
from memory.anchors import contrast_queries
from memory.capture import Capture
from memory.consolidate import EditorConfig, QFEditor
from memory.loading import load_model


def last_keys(model, tokenizer, names: list[str], text: str) -> torch.Tensor:
    """The key at the last token of ``text`` at each of ``names`` (down_proj modules) -> (L, D) float64."""
    ids = tokenizer(text).input_ids
    with Capture(model, names, stop=True) as cap:
        cap.run(input_ids=torch.tensor([ids]).to(next(model.parameters()).device), use_cache=False)
    return torch.stack([cap.inputs[name][0, -1].double().cpu() for name in names])


def alpha(k_f: torch.Tensor, k_x: torch.Tensor, inverse=None, held: torch.Tensor | None = None) -> float:
    """The share of the fact's change at k_f that k_x gets: in M (``inverse`` maps rows X to M^{-1} X),
    or with the keys ``held`` (A, D) held unchanged (the identity metric)."""
    z = k_f if inverse is None else inverse(k_f[None])[0]
    if held is not None and held.shape[0]:
        Q, _ = torch.linalg.qr(held.T)  # (D, A)
        z = k_f - Q @ (Q.T @ k_f)
    return float(z @ k_x / (z @ k_f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="../shared/data/counterfact/dev.json")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--metric", action="store_true", help="also in the default editor's metric at its layer")
    parser.add_argument("--anchors", type=int, default=0, help="also with the prompt asked of N other subjects held")
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    layers = list(range(arch.num_layers(model)))
    names = [arch.module_path(model, layer, "down_proj") for layer in layers]
    cases, _, _ = read_cases(args.data, limit=args.limit)
    keys = [[last_keys(model, tokenizer, names, text) for text in (c.prompt, c.paraphrase, c.neighborhood)]
            for c in cases]
    held = [torch.stack([last_keys(model, tokenizer, names, q) for q in contrast_queries(c.prompt, c.subject, args.anchors)]
                        ) if args.anchors and contrast_queries(c.prompt, c.subject, 1) else None for c in cases]
    columns = {"para": 1, "nbhd": 2}
    print(f"{len(cases)} CounterFact cases, {loaded.name}; alpha = the share of the fact's change another prompt gets")
    print("| layer | metric | alpha paraphrase | alpha neighbour | alpha unrelated | paraphrase > neighbour |")
    print("|---|---|---|---|---|---|")
    metrics = [("identity", None, False, layers)]
    if args.anchors:
        metrics.append((f"{args.anchors} anchors held", None, True, layers))
    if args.metric:
        editor = QFEditor(loaded, EditorConfig(gate=0.0))  # the linear update's preserving metric
        metrics.append(("preserving (default)", editor.joint.metric.keys, False, [editor.layer]))
    for label, inverse, anchored, at in metrics:
        for layer in at:
            h = [None if not anchored or a is None else a[:, layer] for a in held]
            got = {name: [alpha(k[0][layer], k[i][layer], inverse, a) for k, a in zip(keys, h)] for name, i in columns.items()}
            unrelated = [alpha(keys[i][0][layer], keys[(i + 1) % len(keys)][0][layer], inverse, h[i])
                         for i in range(len(keys))]
            wins = statistics.mean(p > n for p, n in zip(got["para"], got["nbhd"]))
            print(f"| {layer} | {label} | {statistics.mean(got['para']):.3f} | {statistics.mean(got['nbhd']):.3f} | "
                  f"{statistics.mean(unrelated):.3f} | {wins:.2f} |")


if __name__ == "__main__":
    main()
