"""The refractory rule (memory.refractory, --refractory): a neuron does not fire where its target is among
the last input tokens, in the solve too; a neuron whose own row holds its target is exempt; the last tokens
are read at inference across cached calls and packed passes; the rows record them (ledger, rebuild, undo),
and the cached benchmark scorer sees the rule."""

from dataclasses import replace

import pytest
import torch

from bench.datasets import Poser
from bench.edits import scored_pairs, teacher_forced
from bench.last_layer import LastLayerScorer
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.gated import GatedMemory, gate, installed_patch, unit_rows
from memory.generate import greedy_tokens
from memory.prompts import render_prompt
from memory.refractory import NO_TOKEN, RECENT_TOKENS, holds_target, recent_windows, refractory_targets, row_windows
from tests.test_answer_gate import undoing_fact_1_is_never_having_it
from tests.test_bench_last_layer import _cases, _tokens
from tests.test_subject_center import cli_learns_with
from tests.test_subject_gate import _at_cosine, cached_greedy_is_the_full_pass, learned_from_base, undone_to

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.", subject="Oxinnovate")
WIDTH = 16


def test_the_last_tokens_of_each_position_restart_with_the_positions_and_continue_a_carried_tail():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert recent_windows(ids, 2).tolist() == [[[NO_TOKEN, 5], [5, 6], [6, 7], [7, 8]]]
    # two passes packed into one sequence: the second's windows do not reach into the first
    packed = recent_windows(ids, 3, positions=torch.tensor([[0, 1, 0, 1]]))
    assert packed.tolist() == [[[NO_TOKEN, NO_TOKEN, 5], [NO_TOKEN, 5, 6], [NO_TOKEN, NO_TOKEN, 7], [NO_TOKEN, 7, 8]]]
    # a cached call continues the last one's tail up to its first restart
    carried = recent_windows(torch.tensor([[9, 4]]), 3, positions=torch.tensor([[4, 0]]), carried=torch.tensor([[7, 8]]))
    assert carried.tolist() == [[[7, 8, 9], [NO_TOKEN, NO_TOKEN, 4]]]
    assert row_windows([1, 2, 3], 2).tolist() == [[NO_TOKEN] * (RECENT_TOKENS - 2) + [1, 2],
                                                  [NO_TOKEN] * (RECENT_TOKENS - 3) + [1, 2, 3]]


def test_a_neuron_whose_own_row_holds_its_target_is_exempt_and_no_target_is_never_held():
    # "1 1": the second row's input is its own target; the first's target is held there
    targets, recent = torch.tensor([1, 1, 9]), torch.tensor([[3, 4], [4, 1], [1, 1]])
    assert refractory_targets(targets, recent, 2).tolist() == [1, NO_TOKEN, 9]
    assert refractory_targets(targets, recent, 1).tolist() == [1, NO_TOKEN, 9]
    assert refractory_targets(torch.tensor([NO_TOKEN]), torch.tensor([[NO_TOKEN]]), 1).tolist() == [NO_TOKEN]
    assert holds_target(torch.tensor([[4, 1], [NO_TOKEN, NO_TOKEN]]), torch.tensor([1, NO_TOKEN])).tolist() == [True, False]
    every = holds_target(torch.tensor([[4, 1], [2, 3]])[:, None, :], torch.tensor([1, 3, NO_TOKEN]))
    assert every.tolist() == [[True, False, False], [False, True, False]]


def _answer_rows(generator, cos: float = 0.95):
    """An answer's two rows whose keys fire each other: unit keys (2, WIDTH), residuals, weights; row 0
    predicts token 7 after the prompt's token 3, row 1 predicts 9 after reading 7."""
    X0 = unit_rows(torch.randn(1, WIDTH, generator=generator))
    X = torch.cat([X0, _at_cosine(X0[0], cos, generator)[None]])
    R = torch.randn(2, WIDTH, generator=generator, dtype=torch.float64)
    return X, R, torch.ones(2, dtype=torch.float64), torch.tensor([7, 9]), torch.tensor([[2, 3], [3, 7]])


def test_a_row_does_not_fire_the_neuron_of_the_token_it_reads_and_each_row_is_still_met():
    g = torch.Generator().manual_seed(0)
    X, R, w, targets, recent = _answer_rows(g)
    plain, refractory = GatedMemory(WIDTH, tau=0.9), GatedMemory(WIDTH, tau=0.9, refractory=2)
    for memory in (plain, refractory):
        memory.add("a", X, R, w, targets=targets, recent=recent)
    neurons = refractory.solve()
    assert neurons.refractory_targets.tolist() == [7, 9] and neurons.refractory == 2
    for rows, expected in ((slice(0, 1), R[:1]), (slice(1, 2), R[1:])):  # met within the ridge's compromise
        assert neurons.output(X[rows], recent=recent[rows]).double() == pytest.approx(expected.float().double(), abs=2e-2)
    # row 1 reads 7: neuron 0 (which writes 7) is silent there, so the solve gives neuron 1 all of row 1's
    # residual (within the ridge's compromise); without the rule neuron 0 writes half of its value there too
    assert (neurons.values[1].double() - R[1]).norm() < 1e-2 * R[1].norm()
    assert (plain.solve().values[1].double() - R[1]).norm() > 0.2 * R[1].norm()
    # at row 0's own key, once 7 has been read: neuron 0 is silent, neuron 1 fires as its cosine says
    cos = float(unit_rows(X[:1]) @ X[1])
    after = neurons.output(X[:1], recent=torch.tensor([[7, 5]]))
    assert after.double() == pytest.approx((gate(torch.tensor(cos), 0.9) * neurons.values[1]).double()[None], abs=1e-5)
    with pytest.raises(ValueError, match="last 2 input tokens"):
        neurons.output(X)


def test_another_facts_row_that_reads_a_target_does_not_fire_its_neuron_and_undo_is_exact():
    g = torch.Generator().manual_seed(1)
    X, R, w, targets, recent = _answer_rows(g)
    other = _at_cosine(X[0], 0.97, g)[None]  # another fact's row, near row 0, right after reading 7
    R2 = torch.randn(1, WIDTH, generator=g, dtype=torch.float64)
    memory, alone = GatedMemory(WIDTH, tau=0.9, refractory=1), GatedMemory(WIDTH, tau=0.9, refractory=1)
    memory.add("a", X, R, w, targets=targets, recent=recent)
    alone.add("a", X, R, w, targets=targets, recent=recent)
    memory.add("b", other, R2, w[:1], targets=torch.tensor([4]), recent=torch.tensor([[7]]))
    neurons = memory.solve()
    assert neurons.output(other, recent=torch.tensor([[7]])).double() == pytest.approx(R2.float().double(), abs=2e-2)
    memory.remove("b")
    probe = torch.cat([X, other])
    last = torch.tensor([[3], [7], [7]])
    assert torch.equal(memory.solve().output(probe, recent=last), alone.solve().output(probe, recent=last))


def test_rows_recorded_without_their_last_tokens_are_left_alone_and_bad_ones_refused():
    g = torch.Generator().manual_seed(2)
    X, R, w, targets, recent = _answer_rows(g)
    memory = GatedMemory(WIDTH, tau=0.9, refractory=2)
    memory.add("old", X, R, w)  # a capture from before the rule: no targets, no tokens
    assert memory.solve().refractory_targets.tolist() == [NO_TOKEN, NO_TOKEN]
    with pytest.raises(ValueError, match="last 2 input tokens"):
        memory.add("short", X, R, w, targets=targets, recent=recent[:, -1:])
    with pytest.raises(ValueError, match="refractory span"):
        GatedMemory(WIDTH, tau=0.9, refractory=RECENT_TOKENS + 1)


def _editor(tiny, refractory: int = 2, **settings) -> QFEditor:
    config = dict(gate=0.5, gain=3.0, refractory=refractory, max_answer_tokens=4, verify_tokens=4)
    return QFEditor(tiny, EditorConfig(**(config | settings)))


def test_a_facts_rows_record_their_last_tokens_and_the_editor_refuses_the_rule_without_a_gate(tiny_qwen):
    editor = _editor(tiny_qwen)
    rows = editor.capture(FACT)
    prompt = render_prompt(tiny_qwen.tokenizer, FACT.query)
    answer = list(rows.targets)
    assert rows.recent.shape == (len(answer), RECENT_TOKENS)
    assert rows.recent[0, -1] == prompt[-1] and rows.recent[1:, -1].tolist() == answer[:-1]
    assert rows.recent[2].tolist() == (prompt + answer)[len(prompt) + 2 - RECENT_TOKENS:len(prompt) + 2]
    with pytest.raises(ValueError, match="--refractory .* needs --gate"):
        _editor(tiny_qwen, gate=0.0, subject_gate=0.0)


def test_learning_with_the_rule_reads_the_tokens_across_cached_calls_and_undoes_exactly(tiny_qwen):
    editor = _editor(tiny_qwen, refractory=3)
    model = tiny_qwen.model
    prompt, base = learned_from_base(editor, FACT)
    patch = installed_patch(editor.mlp)
    assert patch.tokens is not None and editor.neurons.refractory_gated
    seen = []
    hook = editor.mlp.register_forward_hook(lambda *_: seen.append(patch.tokens.recent.clone()))
    generated = list(greedy_tokens(model, prompt, [], 5))
    hook.remove()
    full = recent_windows(torch.tensor([prompt + generated[:-1]]), 3)
    assert torch.equal(torch.cat(seen, 1), full)  # each cached call continued the last one's tokens
    assert cached_greedy_is_the_full_pass(model, prompt)
    assert undone_to(editor, prompt, base) and patch.tokens.recent is None


def test_in_a_forward_pass_the_rule_silences_exactly_the_neurons_whose_target_was_just_read(tiny_qwen):
    # a gate low enough that the tiny model's rows fire each other; no answer gate, so that the neurons read x alone
    editor = _editor(tiny_qwen, refractory=1, gate=0.3, answer_gate=0.0)
    editor.learn(FACT, verify=False)
    ruled = editor.neurons
    unruled = replace(ruled, refractory=0, refractory_targets=None)
    prompt = render_prompt(tiny_qwen.tokenizer, FACT.query)
    sequence = torch.tensor([prompt + list(editor.capture(FACT).targets)[:-1]])  # the fact's own rows, and more
    inputs = []
    hook = editor.mlp.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    with torch.no_grad():
        logits = tiny_qwen.model(input_ids=sequence).logits[0]
        editor.write_neurons(unruled)
        logits_unruled = tiny_qwen.model(input_ids=sequence).logits[0]
    hook.remove()
    recent = recent_windows(sequence, 1)
    silenced = (ruled.output(inputs[0], recent=recent) != unruled.output(inputs[0]))[0].any(-1)
    read = holds_target(recent[0, :, None, :], ruled.refractory_targets).any(-1)  # a target was just read
    assert silenced.any() and not (silenced & ~read).any()
    # the edited layer is the last: only the positions where the rule silenced a neuron change
    assert torch.equal((logits != logits_unruled).any(-1), silenced)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_the_cached_scorer_sees_the_rule(tiny_qwen, template):
    editor = _editor(tiny_qwen)
    poser = Poser(editor.tokenizer, template)
    scorer = LastLayerScorer(editor.model, editor.parameter, poser.shared_prefix)
    cases = _cases("zsre")
    for case in cases:
        scorer.prepare(case.index, _tokens(poser, case))
    editor.learn(FACT, key="a", verify=False)
    for case in cases:
        cached, full = scorer.scores(case.index), teacher_forced(editor.model, poser, scored_pairs(case), None)
        for name in full:
            assert cached[name].logprobs == pytest.approx(full[name].logprobs, abs=1e-4)


def test_the_ledger_rebuilds_the_same_refractory_neurons_and_undo_is_exact(store, tokenizer, tmp_path):
    from agent.ledger_editor import LedgerEditor
    from tests.test_ledger_editor import FACTS, fresh, logits

    config = EditorConfig(gate=0.5, gain=3.0, refractory=2)
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    learned = [first.learn(f) for f in FACTS]
    taught = [logits(first, f) for f in FACTS]
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process: from the stored rows
    assert second.current.neurons.refractory_gated
    assert torch.equal(second.current.neurons.refractory_targets, first.current.neurons.refractory_targets)
    assert all(torch.allclose(logits(second, f), taught[i], atol=1e-5) for i, f in enumerate(FACTS))
    assert store.active_edits(second.checkpoint_id)[0].hyperparams["refractory"] == 2
    assert undoing_fact_1_is_never_having_it(second, learned, config, tokenizer, tmp_path)


def test_the_cli_learns_with_the_rule_and_refuses_it_without_a_gate(tiny_model_dir):
    cli_learns_with(tiny_model_dir, ["--refractory", "2"], "refractory", ["--gate", "0"], "needs --gate", value=2)
