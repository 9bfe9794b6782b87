"""The model and the ledger together (agent.ledger_editor, agent.replay, agent.audit) on tiny models."""

import pytest
import torch

from agent.ledger_editor import LedgerEditor
from memory.consolidate import EditorConfig
from memory.fact import Fact
from memory.prompts import build_pass
from store import Store

FACTS = [
    Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi."),
    Fact("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?", "In Beijing."),
    Fact("My daughter's name is Lena.", "What is my daughter's name?", "Lena."),
]
LAYER = 2


def fresh(kind, tokenizer, seed=0, layers=4):
    """A tiny model; each seed is another checkpoint (its own name in the ledger)."""
    from conftest import loaded

    model = loaded(kind, tokenizer, seed=seed, layers=layers)
    model.name = f"tiny-{kind}-{seed}-{layers}"
    return model


def weight(ledger):
    return ledger.loaded.model.get_parameter(ledger.current.parameter).detach().clone()


def logits(ledger, fact):
    ids = build_pass(ledger.loaded.tokenizer, fact.query, fact.answer).input_ids
    with torch.no_grad():
        return ledger.loaded.model(input_ids=ids).logits.float()


def test_learn_then_a_new_process_sees_the_same_weights(store, tokenizer):
    first = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))
    for fact in FACTS[:2]:
        first.learn(fact, source={"via": "test"})
    assert [f.status for f in store.facts()] == ["consolidated", "consolidated"]
    second = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))  # "next process"
    assert second.active_facts == 2
    assert torch.allclose(weight(first), weight(second), atol=1e-6)
    assert all(e.verification is not None for e in store.active_edits(second.checkpoint_id))


def test_undo_is_exact_and_redo_restores(store, tokenizer, tmp_path):
    ledger = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))
    learned = [ledger.learn(f) for f in FACTS]
    with_all = weight(ledger)
    ledger.undo(learned[1].fact_id)
    assert store.fact(learned[1].fact_id).status == "reverted"
    # A ledger that never contained the fact:
    other = Store(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-tensors")
    never = LedgerEditor(other, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))
    for f in (FACTS[0], FACTS[2]):
        never.learn(f)
    assert (weight(ledger) - weight(never)).abs().max() < 1e-6
    assert (logits(ledger, FACTS[1]) - logits(never, FACTS[1])).abs().max() < 1e-4
    ledger.redo(learned[1].fact_id)
    assert (weight(ledger) - with_all).abs().max() < 1e-6
    other.close()


def test_crash_between_record_and_apply_is_repaired_on_next_load(store, tokenizer, monkeypatch, tmp_path):
    ledger = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER, gate=0.0))
    base = weight(ledger)

    def crash(self, delta):
        raise KeyboardInterrupt("killed after the commit")

    monkeypatch.setattr(type(ledger.current), "write", crash)
    with pytest.raises(KeyboardInterrupt):
        ledger.learn(FACTS[0])
    monkeypatch.undo()
    assert torch.equal(weight(ledger), base)  # never applied
    assert [f.status for f in store.facts()] == ["consolidated"]  # but recorded
    reopened = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER, gate=0.0))
    clean_store = Store(f"sqlite:///{tmp_path / 'clean.db'}", tmp_path / "clean-tensors")
    clean = LedgerEditor(clean_store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER, gate=0.0))
    clean.learn(FACTS[0])
    assert (weight(reopened) - weight(clean)).abs().max() < 1e-6


def test_a_failed_record_leaves_no_fact_and_no_weight_change(store, tokenizer, monkeypatch):
    ledger = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))
    base = weight(ledger)

    def fail(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "record_consolidation", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ledger.learn(FACTS[0])
    assert torch.equal(weight(ledger), base) and ledger.active_facts == 0 and store.facts() == []


def test_replay_onto_same_shapes_other_depth_maps_the_layer_or_refuses(store, tokenizer):
    from agent.replay import ReplayRefused, replay

    source = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=3))
    for f in FACTS[:2]:
        source.learn(f)
    target = LedgerEditor(store, fresh("qwen2", tokenizer, seed=1), EditorConfig())  # another checkpoint
    assert target.checkpoint_id != source.checkpoint_id
    dry = replay(target, dry_run=True)
    assert [r.status for r in dry] == ["would-replay", "would-replay"] and target.active_facts == 0
    done = replay(target)
    assert [r.status for r in done] == ["replayed", "replayed"] and target.active_facts == 2
    assert [r.status for r in replay(target)] == ["present", "present"]
    shallow = LedgerEditor(store, fresh("llama", tokenizer, seed=3, layers=2), EditorConfig())
    with pytest.raises(ReplayRefused, match="layers 0..1"):
        replay(shallow, layer=5)
    assert shallow.active_facts == 0
    # The last of 4 layers maps to the last of 2 (same relative depth).
    assert [(r.status, r.layer) for r in replay(shallow)] == [("replayed", 1), ("replayed", 1)]
    assert shallow.active_facts == 2


def test_mapped_layer_keeps_the_relative_depth():
    from agent.replay import mapped_layer

    assert mapped_layer(27, 28, 24) == 23 and mapped_layer(23, 28, 24) == 20 and mapped_layer(0, 28, 24) == 0
    assert mapped_layer(5, None, 24) == 5 and mapped_layer(5, 24, 24) == 5


def test_audit_reports(store, tokenizer):
    from agent.audit import fact_report, overlap_report, weight_report

    ledger = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER, gate=0.0))
    ids = [ledger.learn(f).fact_id for f in FACTS[:2]]
    report = fact_report(store, ids[0], k=3)
    assert len(report["edits"]) == 1 and len(report["edits"][0]["top_rows"]) == 3
    top_row = report["edits"][0]["top_rows"][0][0]
    by_row = weight_report(store, ledger.checkpoint_id, None, top_row, None)
    assert {f["fact_id"] for f in by_row["facts"]} == set(ids)
    cos = overlap_report(store, ledger.checkpoint_id, *ids)["cosine"]
    assert set(cos) == {ledger.current.parameter} and -1 <= next(iter(cos.values())) <= 1


def test_replay_keeps_the_subject_and_anchors_the_fact_on_the_target(store, tokenizer):
    from agent.replay import replay

    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate")
    source = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=3, anchors=2))
    learned = source.learn(fact)
    target = LedgerEditor(store, fresh("qwen2", tokenizer, seed=1), EditorConfig(layer=3, anchors=2))
    assert [r.status for r in replay(target)] == ["replayed"]
    first, second = store.edits_of_fact(learned.fact_id)
    assert second.checkpoint_id == target.checkpoint_id != first.checkpoint_id
    assert second.hyperparams["rows"] == first.hyperparams["rows"]  # the anchors were captured again on the target
    assert second.hyperparams["anchors"] == 2


def test_a_layer_opened_after_the_ledger_records_its_base_weights(store, tokenizer):
    ledger = LedgerEditor(store, fresh("qwen2", tokenizer), EditorConfig(layer=LAYER))
    ledger.learn(FACTS[0], layer=LAYER + 1)
    other = ledger.editors[LAYER + 1]
    recorded = store.checkpoint(ledger.checkpoint_id)["parameters"]
    assert recorded[other.parameter] == other.joint.base_sha256
    assert recorded[ledger.current.parameter] == ledger.current.joint.base_sha256
