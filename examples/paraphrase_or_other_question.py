"""Can anything at the answering position tell a paraphrase from another question about its subject? (issue 7)

    python examples/paraphrase_or_other_question.py --model qwen2.5-coder-1.5b --limit 300
    python examples/paraphrase_or_other_question.py --model qwen2.5-coder-1.5b --limit 200 \\
        --data ../shared/data/zsre/dev.json --template chat
    python examples/paraphrase_or_other_question.py --model qwen2.5-coder-0.5b --limit 300 --attention 8,12,16,20,23

Under the default gate a fact's neurons fire where its subject has been named and the MLP input at
the position being predicted is within cosine 0.85 of the fact's (memory.gated, memory.subject_gate).
A lower threshold reaches more paraphrases and also more other questions about the subject (the
benchmark's subject leak). A better gate would need a reading of the position that puts the
paraphrase above the other question. This compares, for the first ``--limit`` records, the fact's
prompt with its paraphrase and with a *swap* (the next record's prompt asked of this record's
subject), by:

- ``x``: the last MLP's input (what the gate reads), raw, and centered on the mean over the shipped
  questions of fact (memory.factual_prompts, in the record's template; a mean the tool could ship);
- ``final``: the pre-edit model's last hidden state (after the final norm), raw and centered the same
  way: the answer the model was about to give;
- ``next-token``: the overlap of the two next-token distributions (Bhattacharyya coefficient);
- ``layer l``: with ``--layers``, the residual stream entering layer l there, centered the same way
  (a middle layer might say which question is asked where the last one does not);
- ``query l`` / ``attention l``: with ``--attention``, layer l's attention queries at the position
  (q_proj's output, before the rotary embedding, all heads) and its attention output (o_proj's),
  centered the same way: the in-context model tells a paraphrase from another question by what its
  attention looks up, so the queries might say which attribute is asked where the residual does not;
  and the one head whose query does best on the even records, scored on the odd ones;
- ``subject-centered`` / ``relation``: with ``--relation N``, readings a gate could compute when the
  fact is learned. Under the default a neuron fires only where its subject is named, so what is left
  to tell is which relation is asked. The fact's subject mean ``s`` (the reading averaged over the
  shipped relations asked of the fact's subject) holds what every question about the subject shares:
  ``subject-centered`` compares ``q - s`` with ``fact - s``. The relation mean ``r`` (averaged over
  the fact's question asked of N other subjects, memory.anchors) holds what the question asks of any
  subject: ``relation`` compares ``q - s`` with ``r - mu``, mu the shipped questions' mean.

For each it prints how often the paraphrase is nearer the fact than the swap, and how often the swap
passes a threshold set so that 90%, 70% and 50% of paraphrases do (a gate on that reading, at the
paraphrase reach it would have). On CounterFact it also does so for the paraphrases that ask the
same question (docs/results/counterfact_rephrase_labels_300.json; see
examples/counterfact_rephrase_kinds.py). Numbers: docs/RESULTS.md, "What CounterFact's
generalization measures".
"""

import argparse
import json
from pathlib import Path

import torch

from bench.datasets import Poser, read_cases
from memory import architecture as arch
from memory import factual_prompts
from memory.anchors import contrast_queries
from memory.loading import load_model
from memory.subject_gate import unit_rows as unit

LABELS = Path(__file__).resolve().parent.parent / "docs" / "results" / "counterfact_rephrase_labels_300.json"


class Reader:
    """Forward passes in batches; at each prompt's last position: the last MLP's input, the final
    hidden state, the next-token log-distribution, and the asked layers' residual, attention queries
    and attention outputs. Prompts are padded on the left with their positions counted from their
    first real token, so every prompt ends at the last position and no real token attends to a pad."""

    def __init__(self, loaded, template: str, layers: tuple[int, ...] = (), attention: tuple[int, ...] = (),
                 batch: int = 16):
        self.model, self.poser, self.layers, self.batch = loaded.model, Poser(loaded.tokenizer, template), layers, batch
        self._hooked: dict[str, torch.Tensor] = {}  # each forward pass's hooked outputs, every position
        decoder = arch.decoder_layers(self.model)
        decoder[-1].mlp.register_forward_pre_hook(lambda m, a: self._hooked.__setitem__("x", a[0]))
        for l in attention:
            decoder[l].self_attn.q_proj.register_forward_hook(self._keep(f"query {l}"))
            decoder[l].self_attn.o_proj.register_forward_hook(self._keep(f"attention {l}"))

    def _keep(self, name: str):
        def hook(module, args, output):
            self._hooked[name] = output
        return hook

    def read(self, text: str) -> dict[str, torch.Tensor]:
        return self.read_many([text])[0]

    @torch.no_grad()
    def read_many(self, texts: list[str]) -> list[dict[str, torch.Tensor]]:
        reads = []
        for start in range(0, len(texts), self.batch):
            ids = [self.poser.prompt_ids(t) for t in texts[start:start + self.batch]]
            width = max(map(len, ids))
            input_ids = torch.tensor([[0] * (width - len(row)) + row for row in ids])
            mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
            self._hooked.clear()
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                             output_hidden_states=True, logits_to_keep=1)
            for b in range(len(ids)):  # every prompt ends at the last position
                reads.append({**{k: v[b, -1].float() for k, v in self._hooked.items()},
                              "final": out.hidden_states[-1][b, -1].float(),
                              "logp": out.logits[b, -1].float().log_softmax(-1),
                              **{f"layer {l}": out.hidden_states[l][b, -1].float() for l in self.layers}})
        return reads


def best_head(fact: torch.Tensor, para: torch.Tensor, swap: torch.Tensor, heads: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The attention head whose centered query puts the paraphrase above the swap most often on the
    even records, and its cosines (paraphrase, swap) on the odd ones (chosen on one half, scored on
    the other, so the choice is not scored on what chose it)."""
    cos = [(unit(p.unflatten(-1, (heads, -1))) * unit(fact.unflatten(-1, (heads, -1)))).sum(-1) for p in (para, swap)]
    head = int((cos[0][0::2] > cos[1][0::2]).float().mean(0).argmax())
    return head, cos[0][1::2, head], cos[1][1::2, head]


def report(name: str, fact: dict, para: dict, swap: dict, means: dict[str, torch.Tensor], heads: int,
           subject: dict | None = None, relation: dict | None = None) -> None:
    """One line per reading: paraphrase above swap, and the swap's pass rate at matched paraphrase reach."""
    readings = {}
    for key, mu in means.items():
        if key in ("x", "final"):
            readings[f"{key} raw"] = tuple((unit(p) * unit(fact[key])).sum(-1) for p in (para[key], swap[key]))
        readings[f"{key} centered"] = tuple((unit(p - mu) * unit(fact[key] - mu)).sum(-1) for p in (para[key], swap[key]))
        if subject is not None and key in subject:
            s = subject[key]
            readings[f"{key} subject-centered"] = tuple((unit(p - s) * unit(fact[key] - s)).sum(-1) for p in (para[key], swap[key]))
            readings[f"{key} relation"] = tuple((unit(p - s) * unit(relation[key] - mu)).sum(-1) for p in (para[key], swap[key]))
            readings[f"{key} relation + subject-centered"] = tuple(
                (unit(p - s) * unit(fact[key] - s)).sum(-1) + (unit(p - s) * unit(relation[key] - mu)).sum(-1)
                for p in (para[key], swap[key]))
        if key.startswith("query"):
            head, cp, cs = best_head(fact[key] - mu, para[key] - mu, swap[key] - mu, heads)
            readings[f"{key} centered, head {head} (chosen on even records; odd records)"] = (cp, cs)
    overlap = lambda a, b: (0.5 * (a + b)).exp().sum(-1)  # noqa: E731  sum sqrt(p q)
    readings["next-token overlap"] = (overlap(fact["logp"], para["logp"]), overlap(fact["logp"], swap["logp"]))
    print(f"\n{name} ({fact['x'].shape[0]} records)")
    print("| reading | paraphrase nearer than swap | swap passes where 90% / 70% / 50% of paraphrases do | at cosine |")
    print("|---|---|---|---|")
    for reading, (cp, cs) in readings.items():
        at = [torch.quantile(cp, 1 - reach) for reach in (0.9, 0.7, 0.5)]
        passes = [f"{(cs > t).float().mean():.2f}" for t in at]
        print(f"| {reading} | {(cp > cs).float().mean():.2f} | {' / '.join(passes)} | {' / '.join(f'{t:.2f}' for t in at)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--data", default="../shared/data/counterfact/dev.json")
    parser.add_argument("--template", choices=("chat", "plain"), default="plain")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--shipped-every", type=int, default=4, help="every k-th shipped question for the mean")
    parser.add_argument("--layers", default="", help="also these layers' residual states, e.g. 8,12,16,20")
    parser.add_argument("--attention", default="", help="also these layers' attention queries and outputs, e.g. 12,16,20")
    parser.add_argument("--relation", type=int, default=0,
                        help="also the subject-centered and relation readings, the relation from this many other subjects")
    args = parser.parse_args()
    loaded = load_model(args.model)
    layers = tuple(int(v) for v in args.layers.split(",") if v)
    attention = tuple(int(v) for v in args.attention.split(",") if v)
    reader = Reader(loaded, args.template, layers, attention)
    shipped = factual_prompts.questions() if args.template == "chat" else factual_prompts.completions()
    shipped_reads = reader.read_many(shipped[::args.shipped_every])
    readable = ("x", "final", *(f"layer {l}" for l in layers), *(f"{what} {l}" for l in attention for what in ("query", "attention")))
    means = {key: torch.stack([r[key] for r in shipped_reads]).mean(0) for key in readable}
    cases, _, family = read_cases(args.data, limit=args.limit)
    kept, reads = [], {"fact": [], "para": [], "swap": [], "subject": [], "relation": []}
    # every shipped relation, as the template puts it
    subject_questions = [pair[args.template == "chat"] for _, relations in factual_prompts.KINDS for pair in relations]

    def mean_read(texts: list[str]) -> dict[str, torch.Tensor]:
        rs = reader.read_many(texts)
        return {key: torch.stack([r[key] for r in rs]).mean(0) for key in readable}
    for i, case in enumerate(cases):
        other = cases[(i + 1) % len(cases)]
        if not case.subject or not other.subject or other.subject not in other.prompt:
            continue
        kept.append(i)
        reads["fact"].append(reader.read(case.prompt))
        reads["para"].append(reader.read(case.paraphrase))
        reads["swap"].append(reader.read(other.prompt.replace(other.subject, case.subject)))
        if args.relation:
            reads["subject"].append(mean_read([q.format(case.subject) for q in subject_questions]))
            reads["relation"].append(mean_read(list(contrast_queries(case.prompt, case.subject, args.relation))))
    print(f"{loaded.name}, {args.data} ({family}), {args.template} template; centered on the mean of "
          f"{len(shipped_reads)} shipped questions")

    def stacked(which: str, rows: list[int]) -> dict[str, torch.Tensor]:
        if not reads[which]:
            return None
        return {key: torch.stack([reads[which][r][key] for r in rows]) for key in reads[which][0]}

    everyone = list(range(len(kept)))
    heads = loaded.model.config.num_attention_heads
    report("every record", *(stacked(w, everyone) for w in ("fact", "para", "swap")), means, heads,
           stacked("subject", everyone), stacked("relation", everyone))
    if family == "counterfact" and LABELS.exists():
        labels = {row["index"]: row["label"] for row in json.loads(LABELS.read_text())["labels"]}
        same = [r for r, i in enumerate(kept) if labels.get(i) == "same"]
        if same:
            report("paraphrases that ask the same question", *(stacked(w, same) for w in ("fact", "para", "swap")), means,
                   heads, stacked("subject", same), stacked("relation", same))


if __name__ == "__main__":
    main()
