"""Would a gate on "the fact's subject is in the context" tell a paraphrase from a neighbour? (issue 7)

    python examples/subject_gate_separation.py --model qwen2.5-coder-0.5b --data ../shared/data/counterfact/dev.json --template plain --limit 200

The key-gated neurons (memory.gated) read the last MLP's input at the answering position only, and
on CounterFact that key is closer to a neighbour (the same relation about another subject) than to
the paraphrase (the fact's subject after an unrelated fragment). This measures a second gate: the
subject's representation at layer l (the input norm's output at the subject's last token of the
fact's prompt) against every position of a probe prompt, ``s = max_p cos(h_l[p], key)``: a
paraphrase names the subject, a neighbour names another one. For each layer and threshold it
prints how often a paraphrase's s passes (own fact) and a neighbour's passes for *any* fact, and
how often a swap (another case's prompt with this fact's subject put in: same subject, other
relation) passes both this gate and the answering key's (the MLP input's cosine above tau_r).
Then whether anything at the answering position tells the paraphrase from the swap: the last MLP
input's cosine with the fact's, raw and centered (minus the mean over the facts' and neighbours'
keys), and each layer's state there. The numbers are in docs/RESULTS.md ("Subject-gated neurons").
"""

import argparse

import torch

from bench.datasets import Poser, read_cases
from memory import architecture as arch
from memory.loading import load_model
from memory.subject_gate import subject_position

TAUS = (0.5, 0.6, 0.7, 0.8, 0.9)


def centered(v: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Rows minus ``mean``, scaled to unit length (a neuron with a bias could read that)."""
    return (v - mean) / (v - mean).norm(dim=-1, keepdim=True)


@torch.no_grad()
def normed_states(model, ids: list[int], layers: list[int]) -> list[torch.Tensor]:
    """Per layer, the input norm's output at every position (P, N), unit rows."""
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states
    blocks = arch.decoder_layers(model)
    per_layer = []
    for l in layers:
        h = blocks[l].input_layernorm(hs[l][0]).float()
        per_layer.append(h / h.norm(dim=-1, keepdim=True))
    return per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="../shared/data/counterfact/dev.json")
    parser.add_argument("--template", choices=("chat", "plain"), default="plain")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--layers", default="2,4,6,8,12,16")
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tok, poser = loaded.model, loaded.tokenizer, Poser(loaded.tokenizer, args.template)
    layers = [int(v) for v in args.layers.split(",")]
    last = arch.num_layers(model) - 1
    mlp_in: dict[str, torch.Tensor] = {}
    handle = arch.decoder_layers(model)[last].mlp.register_forward_pre_hook(
        lambda m, a: mlp_in.__setitem__("x", a[0][0, -1].float()))
    cases, _, _ = read_cases(args.data, limit=args.limit)

    def states(text: str):
        ids = poser.prompt_ids(text)
        per_layer = normed_states(model, ids, layers)
        x = mlp_in["x"]
        return ids, per_layer, x / x.norm()

    keys, facts_x, para, nbhd, swap, kept, last_states = [], [], [], [], [], [], []
    for i, case in enumerate(cases):
        ids, per_layer, x = states(case.prompt)
        end = subject_position(tok, ids, case.subject)
        other = cases[(i + 1) % len(cases)]
        if end is None or other.subject not in other.prompt:
            continue
        kept.append(case)
        keys.append([h[end] for h in per_layer])
        last_states.append([h[-1] for h in per_layer])
        facts_x.append(x)
        para.append(states(case.paraphrase)[1:])
        nbhd.append(states(case.neighborhood)[1:])
        swap.append(states(other.prompt.replace(other.subject, case.subject))[1:])
        if (len(kept)) % 50 == 0:
            print(f"{len(kept)} cases captured")
    handle.remove()
    F = len(kept)
    X = torch.stack(facts_x)
    print(f"{F} of {len(cases)} cases of {args.data} (subject found), {loaded.name}, {args.template} template")
    rel_para = torch.stack([p[1] @ x for p, x in zip(para, X)])
    rel_nbhd_any = torch.stack([n[1] @ X.T for n in nbhd])  # (F, F)
    rel_swap = torch.stack([s[1] @ x for s, x in zip(swap, X)])
    print("answering key cosine (last MLP input): paraphrase/own mean %.3f, neighbour/own mean %.3f, swap/own mean %.3f"
          % (rel_para.mean(), rel_nbhd_any.diagonal().mean(), rel_swap.mean()))
    raw_x = lambda probes: torch.stack([p[1] for p in probes])  # noqa: E731
    mean = torch.cat([X, raw_x(nbhd)]).mean(0)
    Xc, Pc, Sc = (centered(v, mean) for v in (X, raw_x(para), raw_x(swap)))
    cp, cs = (Pc * Xc).sum(-1), (Sc * Xc).sum(-1)
    print("centered: paraphrase/own mean %.3f, swap/own mean %.3f; paraphrase above swap in %.2f of cases"
          % (cp.mean(), cs.mean(), (cp > cs).float().mean()))
    for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        print(f"  centered tau_r {t}: paraphrase fires {(cp > t).float().mean():.2f}, swap fires {(cs > t).float().mean():.2f}")
    print("\nthe answering position's state at each layer (its input norm's output): own fact vs paraphrase / swap")
    for li, l in enumerate(layers):
        own = torch.stack([k[li] for k in last_states])
        P = torch.stack([p[0][li][-1] for p in para])
        S = torch.stack([w[0][li][-1] for w in swap])
        cp, cs = (P * own).sum(-1), (S * own).sum(-1)
        m = torch.cat([own, torch.stack([n[0][li][-1] for n in nbhd])]).mean(0)
        ccp, ccs = ((centered(v, m) * centered(own, m)).sum(-1) for v in (P, S))
        print(f"layer {l}: raw {cp.mean():.3f} / {cs.mean():.3f}, paraphrase above swap {(cp > cs).float().mean():.2f}; "
              f"centered {ccp.mean():.3f} / {ccs.mean():.3f}, above {(ccp > ccs).float().mean():.2f}; "
              + ", ".join(f"tau {t}: {(ccp > t).float().mean():.2f}/{(ccs > t).float().mean():.2f}" for t in (0.2, 0.3, 0.4, 0.5)))
    for li, l in enumerate(layers):
        K = torch.stack([k[li] for k in keys])  # (F, N)
        s_para = torch.stack([(p[0][li] @ k[li]).max() for p, k in zip(para, keys)])
        s_nbhd = torch.stack([(n[0][li] @ K.T).max(0).values for n in nbhd])  # (F probes, F facts)
        s_swap = torch.stack([(s[0][li] @ k[li]).max() for s, k in zip(swap, keys)])
        print(f"\nlayer {l}: subject score, paraphrase/own mean {s_para.mean():.3f}, neighbour/own mean "
              f"{s_nbhd.diagonal().mean():.3f}, neighbour/best other fact mean {s_nbhd.max(1).values.mean():.3f}")
        print("| tau_s | tau_r | paraphrase fires own | neighbour fires any | swap (same subject, other relation) fires own |")
        print("|---|---|---|---|---|")
        for ts in TAUS:
            for tr in (0.0, 0.3, 0.5, 0.7):
                p = ((s_para > ts) & (rel_para > tr)).float().mean()
                n = ((s_nbhd > ts) & (rel_nbhd_any > tr)).any(1).float().mean()
                w = ((s_swap > ts) & (rel_swap > tr)).float().mean()
                print(f"| {ts} | {tr} | {p:.2f} | {n:.2f} | {w:.2f} |")


if __name__ == "__main__":
    main()
