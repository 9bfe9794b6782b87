"""A fact's capture three ways: two forward passes, one right-padded batch, one packed pass (the default).

    python examples/packed_capture_speed.py --model qwen2.5-coder-1.5b --facts 8
    python examples/packed_capture_speed.py --model qwen2.5-coder-1.5b --subject-means 7

For each of the speed benchmark's synthetic facts (bench.speed) the instructed and plain passes are
captured at the edited layer's down_proj (a) as two forward passes, as the editor did before
2026-12-06, (b) as one right-padded batch, (c) as QFEditor.capture_passes does (packed into one
sequence after the cached system turn, memory.packing); the three interleaved per fact, after one
warm-up fact, and the medians printed. Each way's rows are checked against (a) (relative error
below 1e-4).

With ``--subject-means S`` it times instead the subject-centered gate's mean (memory.subject_center) for S
CounterFact-like subjects: the 12 chat questions at the answering position as one right-padded batch (as
QFEditor.capture_anchors did before 2026-12-07) and as capture_anchors does now (packed after the cached
system turn), after one warm-up subject, checked against each other the same way.
"""

import argparse
import statistics
import time

import torch

from bench.speed import synthetic_facts
from memory.capture import Capture, right_padded_ids
from memory.consolidate import EditorConfig, QFEditor
from memory.loading import load_model
from memory.prompts import build_pass, instructed_system
from memory.subject_center import subject_mean_questions

SUBJECTS = ("Danielle Darrieux", "Toyota", "Apple A5", "Edwin of Northumbria", "Lyon", "Ferrari", "Kryvyi Rih",
            "Leonhard Euler", "BBC One", "Mount Kenya")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--subject-means", type=int, default=0, help="time the subject means of this many subjects instead")
    args = parser.parse_args()
    editor = QFEditor(load_model(args.model), EditorConfig())
    if args.subject_means:
        return time_subject_means(editor, args.subject_means)
    model, down = editor.model, editor.down_name

    def passes(fact):
        return (build_pass(editor.tokenizer, fact.query, fact.answer, instructed_system(fact.instruction, None)),
                build_pass(editor.tokenizer, fact.query, fact.answer, None))

    @torch.no_grad()
    def separate(inst, plain):
        rows = []
        for p in (inst, plain):
            with Capture(model, [down], stop=True) as cap:
                cap.run(input_ids=p.input_ids, use_cache=False)
            rows.append(cap.inputs[down][0, p.rows].float())
        return rows

    @torch.no_grad()
    def padded(inst, plain):
        ids, mask = right_padded_ids([inst.input_ids[0].tolist(), plain.input_ids[0].tolist()], pad=0)
        with Capture(model, [down], stop=True) as cap:
            cap.run(input_ids=ids, attention_mask=mask, use_cache=False)
        return [cap.inputs[down][i, p.rows].float() for i, p in enumerate((inst, plain))]

    def packed(inst, plain):
        return [rows.U for rows in editor.capture_passes([inst, plain])]

    ways = (separate, padded, packed)
    facts = synthetic_facts(args.facts + 1)
    for way in ways:
        way(*passes(facts[0]))  # warm-up (and the system turn's cache)
    seconds = {way.__name__: [] for way in ways}
    for fact in facts[1:]:
        inst, plain = passes(fact)
        reference = separate(inst, plain)
        for way in ways:
            start = time.perf_counter()
            rows = way(inst, plain)
            seconds[way.__name__].append(time.perf_counter() - start)
            error = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(rows, reference))
            assert error < 1e-4, (way.__name__, error)
    inst, plain = passes(facts[1])
    print(f"{args.model}: instructed {inst.input_ids.shape[1]} tokens, plain {plain.input_ids.shape[1]}, "
          f"cached system turn {len(editor._prefix.prefix)}; medians over {args.facts} facts")
    for name, values in seconds.items():
        print(f"{name:>8}: {statistics.median(values):.3f} s")


def time_subject_means(editor: QFEditor, count: int) -> None:
    model, names = editor.model, [editor.norm_name]

    @torch.no_grad()
    def padded(prompts):
        ids, mask = right_padded_ids(prompts, pad=0)
        with Capture(model, names, stop=True) as cap:
            cap.run(input_ids=ids, attention_mask=mask, use_cache=False)
        return cap.inputs[editor.norm_name][torch.arange(len(prompts)), torch.tensor([len(p) - 1 for p in prompts])].float()

    def packed(prompts):
        return editor.capture_anchors(prompts)[1]

    seconds = {"padded": [], "packed": []}
    for n, subject in enumerate(SUBJECTS[:count + 1]):
        prompts = [editor.chat_prompt_ids(q) for q in subject_mean_questions(subject, chat=True)]
        reference = None
        for way in (padded, packed):
            start = time.perf_counter()
            residuals = way(prompts)
            if n:  # the first subject warms up
                seconds[way.__name__].append(time.perf_counter() - start)
            reference = residuals if reference is None else reference
            error = float((residuals - reference).abs().max() / reference.abs().max())
            assert error < 1e-4, (way.__name__, error)
    tokens = sum(len(p) for p in prompts)
    print(f"{len(prompts)} chat questions of a subject ({tokens} tokens in all for {subject!r}), cached system turn "
          f"{len(editor._prefix.prefix)}; medians over {count} subjects")
    for name, values in seconds.items():
        print(f"{name:>8}: {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
