"""Context prefixes: the query also asked after short unrelated sentences, captured and solved with the fact."""

import pytest
import torch

from memory import architecture as arch
from memory.answering import PAPER_RULE
from memory.consolidate import EditorConfig, QFEditor
from memory.contexts import CONTEXT_PREFIXES, in_contexts
from memory.fact import Fact
from memory.prompts import build_pass, instructed_system

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")


def test_the_query_follows_each_of_the_first_prefixes_and_a_count_out_of_range_is_refused():
    assert in_contexts("Who founded Oxinnovate?", 0) == ()
    assert in_contexts("Who founded Oxinnovate?", 2) == tuple(f"{p} Who founded Oxinnovate?" for p in CONTEXT_PREFIXES[:2])
    with pytest.raises(ValueError, match="contexts"):
        in_contexts("q?", len(CONTEXT_PREFIXES) + 1)


def test_an_editor_with_too_many_contexts_is_refused_before_any_fact(tiny_qwen):
    with pytest.raises(ValueError, match="contexts"):
        QFEditor(tiny_qwen, EditorConfig(layer=3, contexts=len(CONTEXT_PREFIXES) + 1))


def test_capture_adds_one_block_per_context_after_the_plain_fact(tiny_qwen):
    alone = QFEditor(tiny_qwen, EditorConfig(layer=3)).capture(FACT)
    rows = QFEditor(tiny_qwen, EditorConfig(layer=3, contexts=2)).capture(FACT)
    T = alone.num_rows
    assert rows.num_rows == 3 * T and rows.queries == 3 and rows.targets == alone.targets * 3
    # the questions are captured in one packed forward pass: the same rows, to float rounding
    torch.testing.assert_close(rows.U_plain[:T], alone.U_plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rows.U[:T], alone.U, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(rows.U_plain[T:2 * T], alone.U_plain)  # after other text, other keys


def test_the_solve_meets_the_query_after_every_context_at_the_last_layer(tiny):
    last = arch.num_layers(tiny.model) - 1
    editor = QFEditor(tiny, EditorConfig(layer=last, **(PAPER_RULE | {"contexts": 3})))
    tok = tiny.tokenizer

    def logits(p):
        with torch.no_grad():
            return tiny.model(input_ids=p.input_ids).logits[0, p.rows].float()

    questions = (FACT.query, *in_contexts(FACT.query, 3))
    passes = [(build_pass(tok, q, "Qi", instructed_system(FACT.instruction, None)), build_pass(tok, q, "Qi"))
              for q in questions]
    targets = [logits(inst) for inst, _ in passes]
    editor.learn(FACT)
    for (_, plain), target in zip(passes, targets):
        assert (logits(plain) - target).abs().max() < 1e-3  # each context's plain pass = its instructed pass


def test_the_bench_captures_plain_prompts_after_the_contexts_too(tiny_qwen):
    from bench.datasets import Poser
    from bench.edits import plain_rows, qf_settings
    from tests.test_bench_edits import _cases

    assert qf_settings("qf/x4") == {"contexts": 4}
    case = _cases("counterfact")[0]
    poser = Poser(tiny_qwen.tokenizer, "plain")
    alone = plain_rows(QFEditor(tiny_qwen, EditorConfig(layer=3)), poser, case)
    rows = plain_rows(QFEditor(tiny_qwen, EditorConfig(layer=3, contexts=2)), poser, case)
    assert rows.queries == 3 and rows.num_rows == 3 * alone.num_rows
    torch.testing.assert_close(rows.U_plain[:alone.num_rows], alone.U_plain, rtol=1e-4, atol=1e-5)  # one packed pass
