"""Write the fact at the subject, its value found by forward passes alone (issue 7, an experiment).

    python examples/subject_edit.py --limit 30 --subject-layer 12      # 0.5B, CounterFact dev, ~25 min

QF writes at the answering position, whose key is mostly the question's template, which the
neighbours share (examples/key_separation.py): generalization and specificity trade. ROME and MEMIT
write at the subject's last token, whose key the paraphrases share and the neighbours do not, but
find the value there by gradient descent, and QF's instructed pass carries nothing at the subject
(examples/subject_patching.py). Here the value comes from forward passes only:

1. The target: at each row t (the positions predicting the target's tokens, teacher forced) the
   target's logit must lead the best other of the plain pass's top 8 tokens by ``--margin``.
2. delta (N,), added to layer l's MLP output at the subject's last token, is the ridge-regularized
   minimum-norm solution of J delta = the margins wanted, J the Jacobian of the margins in delta,
   by finite differences of size ``--step`` along every axis (N sequences, batched; ``--sketch S``:
   S random directions instead), then ``--chords`` corrections with the same J (one pass each).
3. delta joins a joint minimum-norm solve of down_proj at layer l (memory.joint, with that layer's
   K0-preserving metric), its key the down_proj input at the subject's last token, re-solved from
   W0 after every fact, like the editor's.

The editor's default (the last layer, answering position) runs side by side on the same cases
(plain template); the bench's table is printed for both, and ``--json`` keeps it. Tried and
dropped on the way: matching QF's residual change R after the last layer (or the 9 top logits)
instead of the margin (the layer-l subject change reaches under 10% of it), a Krylov basis from R
(12 directions miss 90%), and bfloat16 finite differences (noise). Results: docs/RESULTS.md,
"Writing at the subject".
"""

import argparse
import json
import os
import time

import torch

from bench import metrics as M
from bench.baselines import EditMethod
from bench.datasets import EditCase, Poser, read_cases
from bench.edits import Evaluation, QFMethod, base_fluency, format_table, run_method, with_fluency
from memory import architecture as arch
from memory.capture import Capture
from memory.consolidate import EditorConfig, QFEditor
from memory.loading import load_model
from memory.preserve import Progress


def subject_position(tokenizer, prompt: str, subject: str) -> int:
    """Index of the subject's last token in the plain template's ids of ``prompt`` (raises if absent)."""
    start = prompt.rfind(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not in {prompt!r}")
    end = start + len(subject)
    offsets = tokenizer(prompt, return_offsets_mapping=True).offset_mapping
    return max(i for i, (a, _) in enumerate(offsets) if a < end)


def margin_tokens(logits: torch.Tensor, target: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows' logits (T, V) and target tokens (T,): the tokens each row's margin is read over
    (T, 1 + top: the target, then the ``top`` best others, never the target) and the margins
    (T,): the target's logit minus the best other's."""
    others = logits.double().scatter(1, target[:, None], float("-inf")).topk(top, -1).indices
    tokens = torch.cat([target[:, None], others], 1)
    picked = logits.double().gather(1, tokens)
    return tokens, picked[:, 0] - picked[:, 1:].max(1).values


DEBUG = bool(os.environ.get("QF_DEBUG"))  # print each value solve's miss and size


class SubjectValue:
    """Forward passes of one prompt with a delta added to layer l's MLP output at one position, read
    as the target's margin at each row: with ``tokens`` (T, m) the target then the tokens it must
    lead, the target's logit minus the best of the others'."""

    def __init__(self, model, layer: int, ids: torch.Tensor, position: int, rows: torch.Tensor):
        self.model, self.ids, self.position, self.rows = model, ids, position, rows
        self.mlp = model.get_submodule(arch.module_path(model, layer, "mlp"))
        self.delta: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None
        self.passes = 0

    def _add(self, module, args, output):
        if self.delta is None:
            return output
        output = output.clone()
        output[:, self.position] += self.delta.to(output.dtype)  # (N,) or (B, N)
        return output

    def batch(self, deltas: torch.Tensor) -> torch.Tensor:
        """The margins at the rows with each of ``deltas`` (B, N) -> (B, T, 1)."""
        self.delta, self.passes = deltas, self.passes + deltas.shape[0]
        handle = self.mlp.register_forward_hook(self._add)
        try:
            with torch.no_grad():
                ids = self.ids.expand(deltas.shape[0], -1)
                logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=len(self.rows)).logits.double()
        finally:
            handle.remove()
        index = self.tokens.to(logits.device)[None].expand(deltas.shape[0], -1, -1)
        picked = logits.gather(2, index)
        return (picked[..., :1] - picked[..., 1:].max(2, keepdim=True).values).cpu()  # target's margin


def solve_value(F: SubjectValue, wanted: torch.Tensor, chords: int, ridge: float, step: float,
                sketch: int = 0, chunk: int = 64) -> torch.Tensor:
    """delta (N,) that changes the margins F reads by ``wanted`` (T, 1): the Jacobian by finite
    differences of size ``step`` along every axis (N sequences, ``chunk`` a batch) or ``sketch``
    random directions, the ridge-regularized minimum-norm solution, then ``chords`` corrections."""
    N = F.model.config.hidden_size
    dtype = next(F.model.parameters()).dtype
    base = F.batch(torch.zeros(1, N, dtype=dtype))[0].reshape(-1)
    # The directions probed: every axis, or ``sketch`` random orthonormal ones (delta stays in their span).
    axes = torch.eye(N, dtype=torch.float64) if not sketch else torch.linalg.qr(
        torch.randn(N, sketch, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0].T
    probes = (axes * step).to(dtype)
    J = torch.cat([(F.batch(probes[i:i + chunk]).reshape(-1, base.numel()) - base) / step
                   for i in range(0, len(probes), chunk)]).T @ axes  # (T*m, N), zero off the probed span
    gram = J @ J.T
    lam = ridge * gram.diagonal().mean()
    solve = lambda target: J.T @ torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), target)
    delta = solve(wanted.reshape(-1))
    for _ in range(chords):
        delta = delta + solve(wanted.reshape(-1) - (F.batch(delta[None].to(dtype))[0].reshape(-1) - base))
    if DEBUG:
        got = F.batch(delta[None].to(dtype))[0].reshape(-1) - base
        print(f"  |wanted| {wanted.norm():.1f} miss {(wanted.reshape(-1) - got).norm() / wanted.norm():.3f} "
              f"|delta| {delta.norm():.1f} linear miss {(wanted.reshape(-1) - J @ delta).norm() / wanted.norm():.3f}")
    return delta


class SubjectMethod(EditMethod):
    """CounterFact cases written at the subject's last token of ``writer``'s layer (module docstring)."""

    name = "subject"

    def __init__(self, writer: QFEditor, poser: Poser, margin: float, chords: int, ridge: float, step: float,
                 sketch: int = 0, top: int = 8):
        self.writer, self.poser = writer, poser
        self.margin, self.chords, self.ridge, self.step, self.sketch, self.top = margin, chords, ridge, step, sketch, top
        self.keys: list[tuple] = []
        self.passes = 0  # sequences run to find the values

    def edit(self, cases: list[EditCase]) -> dict:
        t0 = time.perf_counter()
        for case in cases:
            self._add(case)
        self.writer.rebuild()
        return {"seconds": time.perf_counter() - t0}

    def _add(self, case: EditCase) -> None:
        prompt = self.poser.prompt_ids(case.prompt)
        target = self.poser.answer_ids(case.target_new)
        ids = torch.tensor([prompt + target[:-1]]).to(self.writer.loaded.device)
        rows_at = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))
        position = subject_position(self.writer.tokenizer, case.prompt, case.subject)
        F = SubjectValue(self.writer.model, self.writer.layer, ids, position, rows_at)
        with torch.no_grad():
            plain = self.writer.model(input_ids=ids, use_cache=False).logits[0, rows_at].double()
        F.tokens, margin = margin_tokens(plain.cpu(), torch.tensor(target), self.top)
        wanted = (self.margin - margin).clamp(min=0)[:, None]
        delta = solve_value(F, wanted, self.chords, self.ridge, self.step, self.sketch)
        self.passes += F.passes
        with Capture(self.writer.model, [self.writer.down_name], stop=True) as cap:
            cap.run(input_ids=ids, use_cache=False)
        key = cap.inputs[self.writer.down_name][0, position].double().cpu()
        # The solve is from W0: what the current weights already add at this key stays in the residual.
        W_now = self.writer.model.get_parameter(self.writer.parameter).detach().double().cpu()
        residual = delta + (W_now - self.writer.joint.W0.double().cpu()) @ key
        self.writer.joint.add_residual(("subject", case.index), residual[:, None], key[None], torch.ones(1, dtype=torch.float64))
        self.keys.append(("subject", case.index))

    def restore(self) -> None:
        for key in self.keys:
            self.writer.joint.remove(key)
        self.keys.clear()
        self.writer.rebuild()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="../shared/data/counterfact/dev.json")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--subject-layer", type=int, default=12, help="the layer whose down_proj is written")
    parser.add_argument("--margin", type=float, default=3.0, help="the target's logit lead wanted at each row")
    parser.add_argument("--chords", type=int, default=2, help="chord corrections (one forward pass each)")
    parser.add_argument("--ridge", type=float, default=1e-3, help="relative ridge of the minimum-norm solve")
    parser.add_argument("--step", type=float, default=1.0, help="finite-difference step (residual units)")
    parser.add_argument("--dtype", default="float32", help="finite differences need float32")
    parser.add_argument("--sketch", type=int, default=0, help="probe this many random directions, not every axis")
    parser.add_argument("--gen-cases", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the linear update's default")
    parser.add_argument("--json", dest="out", default=None, help="write the result here")
    args = parser.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, progress=False)
    bar: Progress = lambda description, total: (lambda n: None)
    # The linear update (the default when this was measured, 2026-12-04): the writer adds residuals to
    # down_proj's joint solve, and the baseline is the one docs/RESULTS.md compares with.
    reader = QFEditor(loaded, EditorConfig(gate=0.0))
    writer = QFEditor(loaded, EditorConfig(layer=args.subject_layer, question_keys=0.0, gate=0.0))
    writer.prepare_keys()
    cases = [c for c in read_cases(args.data, limit=args.limit)[0] if c.subject in c.prompt]
    poser = Poser(loaded.tokenizer, "plain")
    evaluation = Evaluation(poser, gen_tokens=16 if args.gen_cases else 0, gen_cases=args.gen_cases or None)
    pre, pre_metrics = evaluation.run(loaded.model, cases, lambda c: None, bar("", 0))
    pre_metrics = with_fluency(pre_metrics, base_fluency(loaded.model, poser, cases, pre))
    evaluation.pre = pre
    result = {"pre": {**M.aggregate(pre_metrics), "relative_weight_change": 0.0}, "methods": {}}
    methods = [SubjectMethod(writer, poser, args.margin, args.chords, args.ridge, args.step, args.sketch)]
    if not args.no_baseline:
        methods.insert(0, QFMethod(reader, poser))
    for method in methods:
        summary, _ = run_method(writer if isinstance(method, SubjectMethod) else reader, method, cases, evaluation, 1, None, bar)
        if isinstance(method, SubjectMethod):
            summary["sequences_per_fact"] = method.passes / len(cases)
        result["methods"][method.name] = summary
    print(format_table(result))
    print(json.dumps({name: {k: v for k, v in s.items() if k not in ("curve",)} for name, s in result["methods"].items()}, indent=1, default=str))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **result}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
