"""The answer gate (memory.answer_gate, --answer-gate): a neuron fires only where the base model's
answer state matches its row's; the solve applies the same step to the rows that fire each other;
on a model, the editor derives the answer keys from the captured rows, generation with a KV cache
matches the full pass, the cached benchmark scorer matches the forward pass, undo is exact, and the
ledger's rebuild gives the same neurons."""

import pytest
import torch

from memory import architecture as arch
from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact
from memory.gated import GatedMemory, installed_patch, unit_rows
from tests.test_subject_gate import cached_greedy_is_the_full_pass, learned_from_base, undone_to

FACT = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.", subject="Oxinnovate")
WIDTH = 16


def _memory(answer_tau: float = 0.8, mean: torch.Tensor | None = None) -> GatedMemory:
    return GatedMemory(WIDTH, tau=0.9, answer_tau=answer_tau, answer_mean=torch.zeros(WIDTH) if mean is None else mean)


def _at_cosine(key: torch.Tensor, cos: float, generator) -> torch.Tensor:
    """A unit vector at exactly cosine ``cos`` with the unit vector ``key``."""
    other = torch.randn(key.shape[-1], generator=generator)
    other = other - (other @ key) * key
    return cos * key + (1 - cos**2) ** 0.5 * other / other.norm()


def test_a_neuron_fires_only_where_the_centered_answer_state_matches_its_rows():
    g = torch.Generator().manual_seed(0)
    X, R = torch.randn(1, WIDTH, generator=g), torch.randn(1, WIDTH, generator=g)
    mean = 10 * unit_rows(torch.randn(1, WIDTH, generator=g))[0]  # what every answer state shares
    d = unit_rows(torch.randn(1, WIDTH, generator=g))[0]
    F = (mean + d)[None]
    memory = _memory(0.8, mean)
    memory.add("f", X, R, torch.ones(1), answer_states=F)
    neurons = memory.solve()
    assert neurons.answer_gated
    # at its own row (its own key, its own answer state) the neuron writes its residual
    assert neurons.output(X, answer=F).double() == pytest.approx(R.double(), abs=1e-5)
    # the same key, an answer state whose centered cosine is just above / below the gate
    above, below = ((mean + _at_cosine(d, c, g))[None] for c in (0.85, 0.75))
    assert neurons.output(X, answer=above).double() == pytest.approx(R.double(), abs=1e-5)
    assert torch.equal(neurons.output(X, answer=below), torch.zeros_like(X))
    # raw, the states are all alike (the mean dominates them): only the centered ones tell them apart
    assert float(unit_rows(below) @ unit_rows(F).T) > 0.99
    with pytest.raises(ValueError, match="answer state"):
        neurons.output(X)  # answer-gated neurons refuse to guess


def test_rows_whose_answers_differ_do_not_fire_each_other_in_the_solve():
    g = torch.Generator().manual_seed(1)
    key = unit_rows(torch.randn(1, WIDTH, generator=g))[0]
    X = torch.stack([key, _at_cosine(key, 0.95, g)])  # keys that fire each other at 0.5 (gate 0.9)
    R = torch.randn(2, WIDTH, generator=g, dtype=torch.float64)
    d = unit_rows(torch.randn(1, WIDTH, generator=g))[0]
    for F, interact in ((torch.stack([d, _at_cosine(d, 0.9, g)]), True), (torch.stack([d, _at_cosine(d, 0.5, g)]), False)):
        memory = _memory()
        memory.add("a", X[:1], R[:1], torch.ones(1), answer_states=F[:1])
        memory.add("b", X[1:], R[1:], torch.ones(1), answer_states=F[1:])
        neurons = memory.solve()
        # each row's constraint is met by the neurons as they fire there (keys and answers)
        written = torch.cat([neurons.output(X[i:i + 1], answer=F[i:i + 1]) for i in range(2)]).double()
        assert written == pytest.approx(R, abs=1e-2 * float(R.abs().max()))
        # apart, each neuron is alone and writes its own residual; together they share it
        assert torch.allclose(neurons.values.double(), R.float().double()) != interact


def test_the_answer_gate_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="mean answer state"):
        GatedMemory(WIDTH, tau=0.9, answer_tau=0.8)
    memory = _memory()
    with pytest.raises(ValueError, match="answer state of each"):
        memory.add("f", torch.randn(1, WIDTH), torch.randn(1, WIDTH), torch.ones(1))


def _editor(tiny, answer_gate: float = 0.8, **settings) -> QFEditor:
    last = arch.num_layers(tiny.model) - 1
    config = dict(layer=last, gate=0.9, subject_gate=0.3, answer_gate=answer_gate, max_answer_tokens=4, verify_tokens=4)
    return QFEditor(tiny, EditorConfig(**(config | settings)))


def test_the_editor_refuses_an_answer_gate_without_gate_or_below_the_last_layer(tiny_qwen):
    with pytest.raises(ValueError, match="needs --gate"):
        _editor(tiny_qwen, gate=0.0, subject_gate=0.0)
    with pytest.raises(ValueError, match="last layer"):
        _editor(tiny_qwen, layer=1)


def test_learning_with_an_answer_gate_generates_as_the_full_pass_and_undoes_exactly(tiny_qwen):
    editor = _editor(tiny_qwen)
    model = tiny_qwen.model
    prompt, base = learned_from_base(editor, FACT)
    patch = installed_patch(editor.mlp)
    assert patch.answers is not None and editor.neurons.answer_gated
    with torch.no_grad():
        edited = model(input_ids=torch.tensor([prompt])).logits
    assert not torch.equal(edited, base)  # the fact's own question: the neurons fire
    assert cached_greedy_is_the_full_pass(model, prompt)  # the answer state read at each cached call
    assert undone_to(editor, prompt, base)


def test_the_ledger_rebuilds_the_same_answer_gated_neurons_and_undo_is_exact(store, tokenizer, tmp_path):
    from agent.ledger_editor import LedgerEditor
    from tests.test_ledger_editor import FACTS, fresh, logits

    config = EditorConfig(gate=0.99, gain=1.0, answer_gate=0.5)
    first = LedgerEditor(store, fresh("qwen2", tokenizer), config)
    learned = [first.learn(f) for f in FACTS]
    taught = [logits(first, f) for f in FACTS]
    second = LedgerEditor(store, fresh("qwen2", tokenizer), config)  # the next process: answer keys from the stored rows
    assert second.current.neurons.answer_gated
    assert torch.equal(second.current.neurons.answer_keys, first.current.neurons.answer_keys)
    assert all(torch.allclose(logits(second, f), taught[i], atol=1e-5) for i, f in enumerate(FACTS))
    assert store.active_edits(second.checkpoint_id)[0].hyperparams["answer_gate"] == 0.5
    assert undoing_fact_1_is_never_having_it(second, learned, config, tokenizer, tmp_path)


def undoing_fact_1_is_never_having_it(editor, learned, config: EditorConfig, tokenizer, tmp_path, facts=None) -> bool:
    """Undo the second of three ``facts`` (default tests.test_ledger_editor.FACTS), ``learned``, in
    ``editor``'s ledger: whether every fact's logits are then those of a ledger that only ever learned
    the other two."""
    from agent.ledger_editor import LedgerEditor
    from store import Store
    from tests.test_ledger_editor import FACTS, fresh, logits

    facts = FACTS if facts is None else facts
    editor.undo(learned[1].fact_id)
    other = Store(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-tensors")
    never = LedgerEditor(other, fresh("qwen2", tokenizer), config)
    for f in (facts[0], facts[2]):
        never.learn(f)
    same = all(torch.equal(logits(editor, f), logits(never, f)) for f in facts)
    other.close()
    return same


def cli_learns_with(model_dir, option: list[str], setting: str, refused: list[str], needs: str, value=None) -> None:
    """``qf learn`` with ``option`` records it as the solver's ``setting`` (``value``, or the option's last word
    as a number); with ``refused`` it exits 1 naming the option and what it ``needs``."""
    import json

    from click.testing import CliRunner

    import cli

    learn = ["learn", "--model", str(model_dir), "--dtype", "float32", "--fact", "Qi started Oxinnovate.",
             "--query", "Who founded Oxinnovate?", "--answer", "Qi", "--json"]
    out = CliRunner().invoke(cli.main, learn + option)
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert json.loads(out.stdout)["solver"][setting] == (float(option[-1]) if value is None else value)
    no = CliRunner().invoke(cli.main, learn + refused + option)
    assert no.exit_code == 1 and option[0] in no.output and needs in no.output, no.output


def test_the_cli_learns_with_an_answer_gate_and_refuses_it_without_a_gate(tiny_model_dir):
    cli_learns_with(tiny_model_dir, ["--answer-gate", "0.8"], "answer_gate", ["--gate", "0"], "needs --gate")
