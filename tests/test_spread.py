"""Spreading a fact over several layers (memory.spread): one solve over the stacked down_proj matrices."""

import pytest
import torch

from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact, FactRows, with_anchors
from memory.joint import JointQF
from memory.preserve import PreservingMetric
from memory.qf import qf_residual
from memory.spread import LowerLayer, spread_layers

N, D = 12, 40
LOWER = (LowerLayer(1, "layers.1.w", "sha1"), LowerLayer(2, "layers.2.w", "sha2"))


def spread_rows(T, seed=0, layers=(1, 2)):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return FactRows("a", tuple(range(T)), r(T, D), r(T, N), r(T, D), r(T, N), torch.ones(T, dtype=torch.float64),
                    lower_keys=r(len(layers), T, D), lower_layers=layers)


def joint(W0, items, lower=LOWER, metrics=None):
    j = JointQF(W0, "layers.3.w", layer=3, lower=tuple(zip(lower, metrics or [None] * len(lower))))
    for key, r in items:
        j.add(key, r)
    return j


def written(delta, lower, rows):
    """The change each layer's delta makes at the fact's rows, top first: dW_l U'_l -> (N, T) each."""
    return [delta.dense() @ rows.U_plain.double().T] + [
        d.dense() @ keys.double().T for d, keys in zip(lower, rows.keys_at(tuple(d.layer for d in lower)))]


def test_spread_layers_are_the_k_layers_up_to_the_top():
    assert spread_layers(23, 1) == (23,)
    assert spread_layers(23, 3) == (21, 22, 23)
    with pytest.raises(ValueError):
        spread_layers(2, 4)
    with pytest.raises(ValueError):
        spread_layers(2, 0)


def test_the_layers_shares_sum_to_the_same_residual_change():
    W0 = torch.randn(N, D)
    facts = [(i, spread_rows(3, seed=i)) for i in range(3)]
    j = joint(W0, facts)
    delta = j.solve()
    lower = j.lower_deltas(delta)
    assert [d.layer for d in lower] == [1, 2] and [d.parameter for d in lower] == ["layers.1.w", "layers.2.w"]
    assert all(torch.equal(d.left, delta.left) for d in lower)  # one left factor (memory.spread)
    for _, rows in facts:
        R = qf_residual(W0, rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
        shares = written(delta, lower, rows)
        assert (sum(shares) - R).abs().max() < 1e-6 * R.abs().max()  # the split sums to R
        assert all(share.abs().max() > 1e-3 * R.abs().max() for share in shares)  # and every layer takes part


def test_spreading_needs_less_change_than_one_layer():
    W0 = torch.randn(N, D)
    facts = [(i, spread_rows(3, seed=i)) for i in range(3)]
    one = joint(W0, facts, lower=())
    many = joint(W0, facts)
    delta = many.solve()
    total = sum(d.norm() ** 2 for d in [delta, *many.lower_deltas(delta)]) ** 0.5
    assert total < one.solve().norm()  # the minimum over the stacked matrices is the smaller


def test_spread_joint_solve_is_order_independent_and_undo_is_exact():
    W0 = torch.randn(N, D)
    facts = [(i, spread_rows(2, seed=i)) for i in range(4)]
    metric = PreservingMetric(torch.eye(D, dtype=torch.float64) + 0.5, strength=5.0)
    forward, backward = joint(W0, facts, metrics=[metric, None]), joint(W0, facts[::-1], metrics=[metric, None])
    for a, b in zip([forward.solve(), *forward.lower_deltas(forward.solve())],
                    [backward.solve(), *backward.lower_deltas(backward.solve())]):
        assert (a.dense() - b.dense()).abs().max() < 1e-10
    delta = forward.solve()
    whole = forward.lower_deltas(delta)
    for i, d in enumerate(whole):  # the facts' shares sum to each layer's delta
        assert (sum(forward.lower_deltas(delta, k)[i].dense() for k in forward.keys) - d.dense()).abs().max() < 1e-10
    forward.remove(2)
    never = joint(W0, [f for f in facts if f[0] != 2], metrics=[metric, None])
    for a, b in zip([forward.solve(), *forward.lower_deltas(forward.solve())],
                    [never.solve(), *never.lower_deltas(never.solve())]):
        assert (a.dense() - b.dense()).abs().max() < 1e-12
    assert forward.solve().metadata["spread"] == "3"


def test_a_fact_without_the_lower_keys_is_refused_clearly():
    W0 = torch.randn(N, D)
    j = joint(W0, [])
    with pytest.raises(ValueError, match=r"no keys of layer\(s\) \[1\]"):
        j.add("f", spread_rows(2, layers=(2,)))
    flat = FactRows("a", (0, 1), *(torch.randn(2, s) for s in (D, N, D, N)), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="no keys of layer"):
        j.add("g", flat)
    assert len(j) == 0
    # a solve over fewer layers takes the ones it needs from rows captured over more
    fewer = joint(W0, [("f", spread_rows(2, layers=(0, 1, 2)))], lower=LOWER[1:])
    assert fewer.num_rows == 2


def test_anchors_carry_their_lower_keys():
    rows = spread_rows(2)
    anchored = with_anchors(rows, torch.randn(3, D), torch.randn(3, N), torch.randn(2, 3, D))
    assert anchored.lower_keys.shape == (2, 5, D) and anchored.lower_layers == (1, 2) and anchored.anchors == 3
    with pytest.raises(ValueError, match="same lower layers"):
        with_anchors(rows, torch.randn(3, D), torch.randn(3, N))


FACTS = [Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate"),
         Fact("My daughter's name is Lena.", "What is my daughter's name?", "Lena")]


def test_editor_writes_every_layer_from_rows_captured_at_the_base_weights(tiny_qwen):
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3, spread=3, preserve=0.0, anchors=2, max_answer_tokens=4))
    assert editor.layers == (1, 2, 3) and len(editor.lower_names) == 2
    before = editor.capture(FACTS[1])
    assert before.lower_keys.shape == (2, before.num_rows, before.U.shape[1]) and before.lower_layers == (1, 2)
    editor.learn(FACTS[0], verify=False)
    model = tiny_qwen.model
    for name, W0 in zip(editor.lower_names, editor.lower_W0):  # the lower layers moved, by their deltas
        assert not torch.equal(model.get_parameter(f"{name}.weight").detach(), W0)
    after = editor.capture(FACTS[1])  # with layers 1 and 2 edited, the keys are still the base model's
    for field_name in ("U", "V", "U_plain", "V_plain", "lower_keys"):
        assert torch.allclose(getattr(after, field_name), getattr(before, field_name), atol=1e-6), field_name
    for d, (parameter, W0) in zip(editor.deltas, editor.base_matrices()):
        assert d.parameter == parameter
        assert torch.allclose(model.get_parameter(parameter).detach().double() - W0.double(), d.dense(), atol=1e-5)
    editor.remove(editor.joint.keys[0])  # undo: every layer back to its base weights
    for d, (parameter, W0) in zip(editor.deltas, editor.base_matrices()):
        assert torch.equal(model.get_parameter(parameter).detach(), W0) and d.rank == 0


def test_the_spread_editor_refuses_what_it_cannot_do(tiny_qwen):
    with pytest.raises(ValueError, match="spread"):
        QFEditor(tiny_qwen, EditorConfig(layer=3, spread=2, auto_significance=True))
    with pytest.raises(ValueError, match="cannot spread over 5 layers"):
        QFEditor(tiny_qwen, EditorConfig(layer=3, spread=5))


def test_ledger_refuses_two_layers_writing_the_same_matrix(tokenizer, tmp_path, monkeypatch):
    from agent.ledger_editor import LedgerEditor
    from conftest import loaded
    from store import Store

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")
    ledger = LedgerEditor(store, loaded("qwen2", tokenizer), EditorConfig(layer=3, spread=2, preserve=0.0, max_answer_tokens=4))
    with pytest.raises(ValueError, match=r"both write layer\(s\) \[2\]"):
        ledger.learn(FACTS[1], layer=2)
    ledger.learn(FACTS[1], layer=1)  # layers 0-1 do not overlap 2-3
    assert sorted(ledger.editors) == [1, 3]
    store.close()


def test_bench_spread_variant():
    from bench.edits import qf_settings

    assert qf_settings("qf/p0/g1/s3") == {"preserve": 0.0, "gain": 1.0, "spread": 3}


def test_a_spread_ledger_records_and_audits_every_layer_s_share(tokenizer, tmp_path, monkeypatch):
    from agent.audit import edit_deltas, fact_report, overlap_report, weight_report
    from agent.ledger_editor import LedgerEditor
    from conftest import loaded
    from store import Store

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")
    ledger = LedgerEditor(store, loaded("qwen2", tokenizer), EditorConfig(layer=3, spread=2, preserve=0.0, max_answer_tokens=4))
    learned = [ledger.learn(f) for f in FACTS]
    editor = ledger.current
    lower = f"{editor.lower_names[0]}.weight"
    assert set(store.checkpoint(ledger.checkpoint_id)["parameters"]) == {editor.parameter, lower}  # both bases recorded
    report = fact_report(store, learned[0].fact_id)
    assert [e["parameter"] for e in report["edits"]] == [editor.parameter, lower]
    assert set(overlap_report(store, ledger.checkpoint_id, learned[0].fact_id, learned[1].fact_id)["cosine"]) == {
        editor.parameter, lower}
    assert {s["parameter"] for s in weight_report(store, ledger.checkpoint_id, lower, row=0, col=None)["facts"]} == {lower}
    # the last fact's recorded shares are its columns of the live joint solve, on every layer
    last, key = edit_deltas(store, store.active_edits(ledger.checkpoint_id)[-1]), editor.joint.keys[-1]
    fresh = [editor.joint.share(editor.delta, key), *editor.joint.lower_deltas(editor.delta, key)]
    assert [d.parameter for d in last] == [d.parameter for d in fresh] == [editor.parameter, lower]
    for recorded, now in zip(last, fresh):
        assert torch.allclose(recorded.dense(), now.dense(), atol=1e-6) and now.norm() > 0
    store.close()


def test_a_benchmark_scores_a_spread_variant_with_forward_passes_and_restores_every_layer(tiny_qwen):
    from bench.edits import run_benchmark
    from tests.test_bench_last_layer import _cases

    editor = QFEditor(tiny_qwen, EditorConfig(preserve=0.0))
    model, cases = tiny_qwen.model, _cases("counterfact")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    runs = [run_benchmark(editor, cases, "plain", ("qf/p0/g1/s2",), eval_every=2, gen_tokens=0, cached_eval=cached)
            for cached in (True, False)]
    cached, full = (r["methods"]["qf/p0/g1/s2"] for r in runs)
    # the cached scorer sees only the last layer's edit: used here, it would score the lower layer's edit away
    for key in ("efficacy", "generalization", "specificity"):
        assert cached["metrics"][key] == pytest.approx(full["metrics"][key], abs=1e-9)
    assert cached["restored"] and cached["metrics"]["relative_weight_change"] > 0
    assert all(torch.equal(p.detach(), before[name]) for name, p in model.named_parameters())
