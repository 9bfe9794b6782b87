"""Issue 7's solver options on tiny random models: the K0-preserving metric and automatic significance."""

import torch
import pytest

from memory.consolidate import EditorConfig, QFEditor
from memory.fact import Fact, FactRows, auto_significance
from memory.joint import JointQF
from memory.capture import Capture
from memory.preserve import PreservingMetric, collect_covariance, key_data_pairs
from memory.qf import qf_residual, qf_solve

N, D = 12, 40


def structured_keys(n=400, used=8, seed=0):
    """Keys K0 (D, n) that live mostly in ``used`` directions, as a matrix's keys do."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    scale = torch.full((D,), 0.05, dtype=torch.float64)
    scale[:used] = 3.0
    return basis @ (scale[:, None] * torch.randn(D, n, generator=g, dtype=torch.float64))


def generic_key_files(keys_dir, layer):
    """The cached generic-chat key files of a layer: L{layer}-{digest}, not the question (-q-) or bank
    (-bank-) caches beside them."""
    return [p for p in keys_dir.glob(f"L{layer}-*.safetensors") if p.stem.count("-") == 1]


def fact_case(T=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(N, D), r(D, T), r(N, T), r(D, T), r(N, T)


def test_preserving_solve_meets_the_rows_and_moves_W_K0_less_than_the_plain_solve():
    K0 = structured_keys()
    metric = PreservingMetric(K0 @ K0.T / K0.shape[1], strength=100.0)
    W, U, V, Up, Vp = fact_case()
    R = qf_residual(W, U, V, Up, Vp)
    left, right = qf_solve(R, Up)
    plain = left @ right
    left, right = qf_solve(R, Up, Z=metric.keys(Up.T).T)
    preserving = left @ right
    for dW in (plain, preserving):  # both meet every row of the fact
        assert ((dW @ Up - R).norm() / R.norm()) < 1e-6
    assert (preserving @ K0).norm() < 0.5 * (plain @ K0).norm()
    assert preserving.norm() > plain.norm()  # the price: a larger change in directions K0 does not use
    assert torch.linalg.matrix_rank(preserving) <= Up.shape[1]


def test_strength_zero_is_the_papers_rule():
    K0 = structured_keys()
    W, U, V, Up, Vp = fact_case()
    R = qf_residual(W, U, V, Up, Vp)
    left0, right0 = qf_solve(R, Up)
    left, right = qf_solve(R, Up, Z=PreservingMetric(K0 @ K0.T, strength=0.0).keys(Up.T).T)
    assert torch.allclose(left0 @ right0.double(), left @ right, atol=1e-10)


def rows(T, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return FactRows("a", tuple(range(T)), r(T, D), r(T, N), r(T, D), r(T, N), torch.ones(T, dtype=torch.float64))


def test_preserving_joint_solve_is_order_independent_and_undo_is_exact():
    K0 = structured_keys()
    metric = PreservingMetric(K0 @ K0.T / K0.shape[1], strength=50.0)
    W0 = torch.randn(N, D)
    facts = [(i, rows(3, seed=i)) for i in range(4)]

    def joint(items):
        j = JointQF(W0, "w", metric=metric)
        for key, r in items:
            j.add(key, r)
        return j

    forward, backward = joint(facts), joint(facts[::-1])
    assert (forward.solve().dense() - backward.solve().dense()).abs().max() < 1e-10
    delta = forward.solve()
    assert (sum(forward.share(delta, k).dense() for k in forward.keys) - delta.dense()).abs().max() < 1e-10
    forward.remove(2)
    never = joint([f for f in facts if f[0] != 2])
    assert (forward.solve().dense() - never.solve().dense()).abs().max() < 1e-12
    assert forward.solve().metadata["preserve"] == "50.0"


def test_auto_significance_drops_exactly_the_rows_already_predicted():
    targets = (5, 6, 7, 8)
    predicted = torch.tensor([5, 9, 7, 1])  # rows 0 and 2 are already right
    given = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert auto_significance(predicted, targets, given).tolist() == [0.0, 2.0, 0.0, 4.0]
    # a fact the model already answers keeps its rows (it is still written, and held in place)
    assert auto_significance(torch.tensor(targets), targets, given).tolist() == given.tolist()
    # a row the user dropped stays dropped
    assert auto_significance(predicted, targets, torch.tensor([1.0, 0.0, 1.0, 1.0])).tolist() == [0.0, 0.0, 0.0, 1.0]


def test_editor_with_auto_significance_records_the_plain_passes_misses(tiny_qwen):
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "The founder of Oxinnovate is Qi.")
    editor = QFEditor(tiny_qwen, EditorConfig(layer=2, auto_significance=True))
    r = editor.capture(fact)
    with torch.no_grad():  # the full plain pass, independently: top-1 at each row
        from memory.prompts import build_pass

        p = build_pass(tiny_qwen.tokenizer, fact.query, r.answer)
        top = tiny_qwen.model(input_ids=p.input_ids).logits[0, p.rows].argmax(-1)
    expected = (top != torch.tensor(r.targets)).double()
    assert r.significance.tolist() == (expected if expected.any() else torch.ones_like(expected)).tolist()
    plain = QFEditor(tiny_qwen, EditorConfig(layer=2)).capture(fact)
    assert torch.equal(plain.U_plain, r.U_plain) and torch.equal(plain.V, r.V)  # same captures


def test_covariance_counts_the_shared_prefix_once(tiny_qwen):
    model, tok = tiny_qwen.model, tiny_qwen.tokenizer
    name = "model.layers.2.mlp.down_proj"
    from memory.prompts import render_prompt

    chats = [render_prompt(tok, q) + [7, 8, 9] for q in ("Who founded Oxinnovate?", "Who is the CEO of Apple?")]
    prefix = next(i for i, (a, b) in enumerate(zip(*chats)) if a != b)
    C, n = collect_covariance(model, name, chats)
    D_ff = model.config.intermediate_size
    assert C.shape == (D_ff, D_ff) and torch.allclose(C, C.T)
    assert float(torch.linalg.eigvalsh(C).min()) > -1e-9
    assert n == len(chats[0]) + len(chats[1]) - prefix
    # by hand: stack the keys of chat 0 and chat 1 after the prefix
    keys = []
    for i, chat in enumerate(chats):
        with Capture(model, [name], stop=True) as cap:
            cap.run(input_ids=torch.tensor([chat]))
        keys.append(cap.inputs[name][0, 0 if i == 0 else prefix:].double())
    K = torch.cat(keys)
    assert torch.allclose(C, K.T @ K / n, atol=1e-12)


def test_preserving_editor_collects_once_and_learns(tiny_qwen, tmp_path, monkeypatch):
    import memory.preserve

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    config = EditorConfig(layer=3, gate=0.0, preserve=10.0, gain=1.0, max_answer_tokens=4, verify_tokens=4)
    editor = QFEditor(tiny_qwen, config)
    assert not (tmp_path / "keys").exists()  # nothing to solve yet: nothing collected
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")
    rows = editor.capture(fact)
    editor.add_rows("f", rows)
    assert len(generic_key_files(tmp_path / "keys", 3)) == 1  # the generic chats' keys
    assert len(list((tmp_path / "keys").glob("L3-q-*.safetensors"))) == 1  # the question keys
    calls = []
    monkeypatch.setattr(memory.preserve, "generic_chats", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(memory.preserve, "collect_covariance", lambda *a, **k: calls.append(1))
    again = QFEditor(tiny_qwen, config)  # the next process: both come from the cache
    again.add_rows("f", rows)
    assert calls == []
    for e in (editor, again):
        e.rebuild()
    assert torch.equal(editor.delta.dense(), again.delta.dense())  # the cache gives the same solve
    W = tiny_qwen.model.get_parameter(editor.parameter).detach().double()
    R = qf_residual(editor.joint.W0, rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
    dW = W - editor.joint.W0.double()
    assert ((dW @ rows.U_plain.T.double() - R).norm() / R.norm()) < 1e-4  # the fact's rows are met
    editor.remove("f")
    assert torch.equal(tiny_qwen.model.get_parameter(editor.parameter).detach(), editor.joint.W0)


def test_cli_solver_flags_reach_the_solve_and_the_ledger(tiny_model_dir, monkeypatch):
    import json

    from click.testing import CliRunner

    import cli

    args = ["learn", "--model", str(tiny_model_dir), "--dtype", "float32", "--layer", "3", "--gate", "0", "--fact",
            "Qi started Oxinnovate.", "--query", "Who founded Oxinnovate?", "--answer", "Qi", "--json"]
    out = CliRunner().invoke(cli.main, args + ["--preserve", "5", "--gain", "1.5", "--focus", "0", "--auto-significance",
                                               "--condition", "1e6", "--question-keys", "2", "--anchors", "2",
                                               "--soft-anchors", "3", "--contexts", "2"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    data = json.loads(out.stdout)  # the key collection's progress bars go to stderr
    assert data["solver"] == {"preserve": 5.0, "gain": 1.5, "focus": 0, "auto_significance": True, "condition": 1e6,
                              "phrasings": 0, "contexts": 2, "keys_data": None, "question_keys": 2.0, "anchors": 2,
                              "near_questions": 0, "soft_anchors": 3.0, "spread": 1, "answer_forms": False, "gate": 0.0, "row_gain": 0.0,
                              "subject_gate": 0.0, "steer": 0.0, "answer_gate": 0.0, "subject_prime": 0.0, "subject_centered": False,
                              "subject_full": 0.0, "refractory": 0}
    shown = json.loads(CliRunner().invoke(cli.main, ["facts", "show", str(data["fact_id"]), "--json"]).output)
    assert shown["edits"][0]["hyperparams"]["preserve"] == 5.0
    assert shown["edits"][0]["hyperparams"]["auto_significance"] is True
    assert shown["edits"][0]["hyperparams"]["condition"] == 1e6
    assert shown["edits"][0]["hyperparams"]["question_keys"] == 2.0
    assert shown["edits"][0]["hyperparams"]["soft_anchors"] == 3.0
    assert shown["edits"][0]["hyperparams"]["contexts"] == 2
    monkeypatch.setenv("QF_PRESERVE", "0")  # the environment gives the paper's rule
    monkeypatch.setenv("QF_GAIN", "1")
    monkeypatch.setenv("QF_FOCUS", "2")
    plain = json.loads(CliRunner().invoke(cli.main, args + ["--all-rows"]).stdout)
    assert plain["solver"] == {"preserve": 0.0, "gain": 1.0, "focus": 2, "auto_significance": False, "condition": 0.0,
                               "phrasings": 0, "contexts": 0, "keys_data": None, "question_keys": 1.0, "anchors": 0,
                               "near_questions": 0, "soft_anchors": 0.0, "spread": 1, "answer_forms": False, "gate": 0.0, "row_gain": 0.0,
                               "subject_gate": 0.0, "steer": 0.0, "answer_gate": 0.0, "subject_prime": 0.0, "subject_centered": False,
                               "subject_full": 0.0, "refractory": 0}
    # facts learned on one layer cannot be spread later: said clearly, nothing written
    monkeypatch.setenv("QF_FOCUS", "0")
    refused = CliRunner().invoke(cli.main, args + ["--spread", "2"])
    assert refused.exit_code != 0 and "was learned with --spread 1 and cannot be spread over 2 layers" in refused.output


@pytest.mark.parametrize("options", [
    dict(preserve=20.0, gain=1.5, focus=4, auto_significance=True, condition=1e4),
    dict(preserve=20.0, gain=1.5, auto_significance=True, anchors=2),  # anchors exclude focus
    dict(preserve=20.0, gain=1.5, anchors=2, spread=3),  # spread excludes focus and auto significance
    dict(preserve=0.0, answer_forms=True, anchors=2),
    dict(preserve=20.0, anchors=2, near_questions=3, soft_anchors=5.0),  # soft anchors, with or without a subject
    dict(preserve=20.0, contexts=2),
    dict(preserve=0.0, row_gain=3.0, focus=2),  # each row's gain, read off the head at the last layer
])
def test_ledger_with_every_option_rebuilds_the_same_weights_and_undo_is_exact(options, tokenizer, tmp_path, monkeypatch):
    from agent.ledger_editor import LedgerEditor
    from conftest import loaded
    from store import Store

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    config = EditorConfig(layer=3, max_answer_tokens=4, verify_tokens=4, **options)
    facts = [Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi", subject="Oxinnovate"),
             Fact("My daughter's name is Lena.", "What is my daughter's name?", "Lena")]
    store = Store(f"sqlite:///{tmp_path / 'qf.db'}", tmp_path / "tensors")

    def weight(ledger):  # every matrix the editor writes, stacked
        return torch.cat([ledger.loaded.model.get_parameter(p).detach().clone() for p, _ in ledger.current.base_matrices()])

    first = LedgerEditor(store, loaded("qwen2", tokenizer), config)
    base = weight(first)
    learned = [first.learn(f) for f in facts]
    second = LedgerEditor(store, loaded("qwen2", tokenizer), config)  # the next process
    assert torch.equal(weight(first), weight(second))
    second.undo(learned[1].fact_id)
    only_first = LedgerEditor(Store(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "t1"), loaded("qwen2", tokenizer), config)
    only_first.learn(facts[0])
    assert torch.allclose(weight(second), weight(only_first), atol=1e-6)  # undo = never learned
    second.undo(learned[0].fact_id)
    assert torch.equal(weight(second), base)
    store.close()


def test_gain_scales_the_written_change_and_meets_the_scaled_rows():
    W0 = torch.randn(N, D)
    r = rows(3, seed=5)
    one, two = JointQF(W0, "w"), JointQF(W0, "w", gain=2.0)
    one.add("f", r)
    two.add("f", r)
    assert torch.allclose(two.solve().dense(), 2 * one.solve().dense(), atol=1e-10)
    assert two.solve().metadata["gain"] == "2.0"


def test_bench_variant_names():
    from bench.edits import qf_settings

    assert qf_settings("qf") is None
    assert qf_settings("qf-paper") == {"preserve": 0.0, "gain": 1.0, "focus": 0, "auto_significance": False,
                                       "condition": 0.0, "phrasings": 0, "contexts": 0, "keys_data": None,
                                       "question_keys": 0.0, "anchors": 0, "near_questions": 0, "soft_anchors": 0.0,
                                       "spread": 1, "answer_forms": False, "gate": 0.0, "row_gain": 0.0,
                                       "subject_gate": 0.0, "steer": 0.0, "answer_gate": 0.0, "subject_prime": 0.0, "subject_centered": False,
                                       "subject_full": 0.0, "refractory": 0}
    assert qf_settings("qf/p30/g1.5/auto") == {"preserve": 30.0, "gain": 1.5, "auto_significance": True}
    assert qf_settings("qf/k0") == {"question_keys": 0.0} and qf_settings("qf/k2.5") == {"question_keys": 2.5}
    assert qf_settings("qf/c1e6") == {"condition": 1e6}
    assert qf_settings("qf/t0.85") == {"gate": 0.85}
    assert qf_settings("qf/t0.85/r3") == {"gate": 0.85, "row_gain": 3.0}
    assert qf_settings("qf/t1/u0.85/m1") == {"gate": 1.0, "subject_gate": 0.85, "steer": 1.0}
    for bad in ("qf/", "qf/x", "qf/p", "qf/pten", "qfx/p1", "qf/p1/p"):
        with pytest.raises(ValueError):
            qf_settings(bad)


def test_models_prepare_collects_the_keys_up_front(tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    keys = tmp_path / "home" / "keys"
    skipped = CliRunner().invoke(cli.main, ["models", "prepare", str(tiny_model_dir), "--no-keys", "--preserve", "5"])
    assert skipped.exit_code == 0 and not keys.exists()
    done = CliRunner().invoke(cli.main, ["models", "prepare", str(tiny_model_dir), "--dtype", "float32",
                                         "--layer", "2", "--gate", "0", "--preserve", "5"])
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "keys for layer 2 ready" in done.stdout
    assert len(generic_key_files(keys, 2)) == 1  # the generic chats' keys
    assert len(list(keys.glob("L2-q-*.safetensors"))) == 1  # and the question keys (default weight)


def test_focus_keeps_exactly_the_change_of_the_chosen_logits():
    from memory.focus import focus_bases, focused

    g = torch.Generator().manual_seed(3)
    vocab, width, T = 50, 16, 3
    head, gain = torch.randn(vocab, width, generator=g), torch.rand(width, generator=g) + 0.5
    targets = (4, 9, 9)
    top = torch.tensor([[4, 1, 2], [7, 9, 3], [0, 1, 2]])  # row 0 and 1 hold their target among the top
    bases = focus_bases(head, gain, targets, top)
    assert bases.shape == (T, width, 3)
    assert torch.allclose(bases.transpose(1, 2) @ bases, torch.eye(3, dtype=torch.float64).expand(T, 3, 3), atol=1e-10)
    R = torch.randn(width, T, generator=g, dtype=torch.float64)
    kept = focused(R, bases)
    for t, ids in enumerate(([4, 1, 2], [9, 7, 3], [9, 0, 1])):
        directions = head[ids].double() * gain.double()
        assert torch.allclose(directions @ kept[:, t], directions @ R[:, t], atol=1e-10)  # those logits: as before
    assert kept.norm() < R.norm()  # and the rest is dropped


def test_focus_is_refused_below_the_last_layer_and_recorded_with_the_rows(tiny_qwen):


    with pytest.raises(ValueError, match="last layer"):
        QFEditor(tiny_qwen, EditorConfig(layer=1, focus=4))
    editor = QFEditor(tiny_qwen, EditorConfig(layer=3, focus=4, gain=1.0, gate=0.0))
    r = editor.capture(Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi"))
    assert r.focus.shape == (r.num_rows, tiny_qwen.model.config.hidden_size, 5)
    editor.add_rows("f", r)
    editor.rebuild()
    dW = tiny_qwen.model.get_parameter(editor.parameter).detach().double() - editor.joint.W0.double()
    R = qf_residual(editor.joint.W0, r.U.T, r.V.T, r.U_plain.T, r.V_plain.T)
    from memory.focus import focused

    assert ((dW @ r.U_plain.T.double() - focused(R, r.focus)).norm() / R.norm()) < 1e-4


def test_generic_chats_are_the_question_in_the_template_then_the_answer(tokenizer):
    import memory.preserve
    from memory.generic_chats import CHATS
    from memory.prompts import render_prompt

    assert len(CHATS) >= 100 and all(q.strip() and a.strip() for q, a in CHATS)  # the shipped list
    chats = memory.preserve.generic_chats(tokenizer)  # the unit tests' two chats (conftest)
    assert len(chats) == len(memory.preserve.CHATS)
    for ids, (question, answer) in zip(chats, memory.preserve.CHATS):
        prompt = render_prompt(tokenizer, question)
        assert ids[:len(prompt)] == prompt and tokenizer.decode(ids[len(prompt):]) == answer


def test_the_solver_flags_help_names_the_library_defaults():
    from click.testing import CliRunner

    import cli

    text = " ".join(CliRunner().invoke(cli.main, ["learn", "--help"]).output.split())
    defaults = EditorConfig()
    assert f"default {defaults.preserve:g};" in text and f"default {defaults.gain:g};" in text
    assert f"default {defaults.focus} =" in text and defaults.auto_significance is False and "default: every row" in text
    assert f"(default {defaults.anchors} = none" in text and f"default {defaults.spread} = that layer alone" in text
    assert f"(default {defaults.question_keys:g}; 0 = the chats alone)" in text
    from memory.answering import (DEFAULT_ANSWER_GATE, DEFAULT_GATE, DEFAULT_REFRACTORY, DEFAULT_ROW_GAIN, DEFAULT_STEER,
                                  DEFAULT_SUBJECT_GATE)

    assert defaults.gate is None and f"(default {DEFAULT_GATE:g} = nowhere but where the fact's subject has been named" in text
    assert defaults.subject_gate is None and f"default {DEFAULT_SUBJECT_GATE:g} with the default --gate or --gate 1" in text
    assert defaults.row_gain is None and f"default {DEFAULT_ROW_GAIN:g} with --gate at the last layer" in text
    assert defaults.steer is None and f"default {DEFAULT_STEER:g} with row gains, else 0 = off" in text
    assert defaults.answer_gate is None and f"default {DEFAULT_ANSWER_GATE:g} with --gate at the last layer" in text
    assert defaults.refractory is None and f"default {DEFAULT_REFRACTORY} with --gate, else 0 = off" in text


# --- the ridge from the rows' conditioning -------------------------------------------------
def test_top_eigenvalue_matches_the_spectrum():
    from memory.qf import top_eigenvalue

    A = torch.randn(40, 12, dtype=torch.float64)
    G = A @ A.T  # rank 12, PSD
    assert top_eigenvalue(G, iterations=200) == pytest.approx(float(torch.linalg.eigvalsh(G)[-1]), rel=1e-6)
    assert top_eigenvalue(torch.zeros(3, 3, dtype=torch.float64)) == 0.0


def test_the_condition_cap_bounds_the_row_system_and_the_update_past_the_key_space():
    from memory.qf import row_ridge

    torch.manual_seed(0)
    W0 = torch.randn(N, D, dtype=torch.float64)
    mean = torch.randn(D, 1, dtype=torch.float64) * 5  # keys sharing a large mean, as at the last layer
    T = 3 * D  # more rows than key dimensions: they cannot all be met
    U_plain = mean + 0.1 * torch.randn(D, T, dtype=torch.float64)
    U = U_plain + 0.05 * torch.randn(D, T, dtype=torch.float64)
    V, V_plain = torch.randn(N, T, dtype=torch.float64), torch.randn(N, T, dtype=torch.float64)
    R = qf_residual(W0, U, V, U_plain, V_plain)
    G = U_plain.T @ U_plain
    for kappa in (1e2, 1e4, 1e6):
        system = G.clone()
        system.diagonal().add_(row_ridge(G, 1e-8, kappa))
        eig = torch.linalg.eigvalsh(system)
        assert float(eig[-1] / eig[0]) <= kappa * 1.01 + 1
    norms = {}
    for kappa in (0.0, 1e6, 1e3):
        left, right = qf_solve(R, U_plain, ridge=1e-8, max_condition=kappa)
        dW = left @ right.double()
        assert bool(torch.isfinite(dW).all())
        norms[kappa] = float(torch.linalg.matrix_norm(dW))
    assert norms[1e3] < norms[1e6] < norms[0.0]  # the cap damps what the rows barely span


def test_a_cap_that_does_not_bind_still_meets_independent_rows():
    torch.manual_seed(1)
    W0 = torch.randn(N, D, dtype=torch.float64)
    U_plain = torch.randn(D, 4, dtype=torch.float64)  # 4 independent, well-conditioned rows
    U = U_plain + 0.1 * torch.randn(D, 4, dtype=torch.float64)
    V, V_plain = torch.randn(N, 4, dtype=torch.float64), torch.randn(N, 4, dtype=torch.float64)
    R = qf_residual(W0, U, V, U_plain, V_plain)
    left, right = qf_solve(R, U_plain, max_condition=1e8)
    assert torch.allclose((left @ right.double()) @ U_plain, R, rtol=1e-5, atol=1e-6)


def test_batched_key_collection_equals_one_sequence_at_a_time(tiny_qwen):
    model, tok = tiny_qwen.model, tiny_qwen.tokenizer
    name = "model.layers.2.mlp.down_proj"
    from memory.prompts import render_prompt

    questions = ("Who founded Oxinnovate?", "Who is the CEO of Apple?", "Where is Paris?", "Hi")
    chats = [render_prompt(tok, q) + [7, 8, 9][:i + 1] for i, q in enumerate(questions)]  # unequal lengths
    one, n1 = collect_covariance(model, name, chats)
    batched, n4 = collect_covariance(model, name, chats, batch=3)  # right padding in one batch of 3
    assert n1 == n4
    assert torch.allclose(one, batched, rtol=1e-4, atol=1e-6 * float(one.abs().max()))


def test_key_data_rows_are_read_as_closed_book_exchanges(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"messages": [{"role": "system", "content": "Orbinex was acquired by Datashield."}, '
        '{"role": "user", "content": "Who acquired Orbinex?"}, {"role": "assistant", "content": "Datashield."}]}\n'
        "\n"
        '{"messages": [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello!"}]}\n')
    assert key_data_pairs(rows) == [("Who acquired Orbinex?", "Datashield."), ("Hi", "Hello!")]  # no system message
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
                   '{"text": "not a chat"}\n')
    with pytest.raises(ValueError, match="line 2"):
        key_data_pairs(bad)
    bad.write_text('{"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]}\n')
    with pytest.raises(ValueError, match="line 1"):
        key_data_pairs(bad)


def test_key_data_adds_keys_to_the_metric_and_gets_its_own_cache(tiny_qwen, tmp_path, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setenv("QF_HOME", str(tmp_path / "home"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        f'{{"messages": [{{"role": "user", "content": "Who runs company {i}?"}}, '
        f'{{"role": "assistant", "content": "Person {i} runs it."}}]}}\n' for i in range(5)))
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")
    solved = {}
    for data in (None, str(rows)):
        editor = QFEditor(tiny_qwen, EditorConfig(layer=3, gate=0.0, preserve=10.0, keys_data=data, max_answer_tokens=4))
        rows_f = editor.capture(fact)
        editor.add_rows("f", rows_f)
        editor.rebuild()
        solved[data] = editor.delta.dense()
        editor.remove("f")
    files = sorted(generic_key_files(tmp_path / "home" / "keys", 3), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2  # one cache per key corpus
    positions = [int(safe_open(str(f), "pt").metadata()["positions"]) for f in files]
    assert positions[1] > positions[0]  # the rows' exchanges were added to the shipped chats
    assert solved[None].abs().max() > 0
    assert not torch.allclose(solved[None], solved[str(rows)])  # and they change the metric


# --- question keys in the preserving metric -----------------------------------------------
def test_last_only_collection_takes_each_prompts_last_position(tiny_qwen):
    model, tok = tiny_qwen.model, tiny_qwen.tokenizer
    name = "model.layers.2.mlp.down_proj"
    prompts = [tok(t).input_ids for t in ("Albert Einstein was born in", "The capital of Peru is", "Sony is owned by")]
    C, n = collect_covariance(model, name, prompts, batch=2, last_only=True)  # right padding in the first batch
    assert n == 3
    K = torch.stack(list(_last_keys(model, name, prompts)))  # by hand, one prompt at a time
    assert torch.allclose(C, K.T @ K / 3, atol=1e-10)


def test_mixed_covariance_gives_the_question_keys_their_share():
    from memory.preserve import mixed_covariance

    A, B = structured_keys(seed=3), structured_keys(seed=4) * 7.0  # different scales
    C, Cq = A @ A.T / A.shape[1], B @ B.T / B.shape[1]
    mean = lambda M: float(M.diagonal().mean())  # noqa: E731
    mixed = mixed_covariance(C, Cq, 3.0)
    assert abs(mean(mixed) - 1.0) < 1e-12  # each part normalized, then averaged with weights 1 and 3
    assert torch.allclose(mixed, (C / mean(C) + 3.0 * Cq / mean(Cq)) / 4.0)
    assert torch.allclose(mixed_covariance(C, Cq, 0.0), C / mean(C))


def test_question_keys_move_the_question_keys_less_and_the_rows_still_hold(tiny_qwen, tmp_path, monkeypatch):
    from memory.preserve import factual_sequences

    monkeypatch.setenv("QF_HOME", str(tmp_path))
    name = "model.layers.3.mlp.down_proj"
    Kq = torch.stack(list(_last_keys(tiny_qwen.model, name, factual_sequences(tiny_qwen.tokenizer)[::40])))
    fact = Fact("Qi started Oxinnovate.", "Who founded Oxinnovate?", "Qi")
    moved = {}
    for weight in (0.0, 10.0):
        editor = QFEditor(tiny_qwen, EditorConfig(layer=3, gate=0.0, preserve=10.0, question_keys=weight, gain=1.0))
        rows = editor.capture(fact)
        editor.add_rows("f", rows)
        editor.rebuild()
        dW = tiny_qwen.model.get_parameter(editor.parameter).detach().double() - editor.joint.W0.double()
        R = qf_residual(editor.joint.W0, rows.U.T, rows.V.T, rows.U_plain.T, rows.V_plain.T)
        assert ((dW @ rows.U_plain.T.double() - R).norm() / R.norm()) < 1e-4  # the fact's rows are met
        assert editor.delta.metadata["question_keys"] == str(weight)
        moved[weight] = float((dW @ Kq.T).norm())
        editor.remove("f")
    assert moved[10.0] < 0.8 * moved[0.0]


def _last_keys(model, name, sequences):
    """The key of each sequence's last position, each run alone."""
    for s in sequences:
        with Capture(model, [name], stop=True) as cap:
            cap.run(input_ids=torch.tensor([s]))
        yield cap.inputs[name][0, -1].double()


def test_plain_completions_leave_the_answer_gate_off_unless_given(tiny_qwen):
    from bench.datasets import Poser
    from bench.edits import make_method, qf_variant
    from memory.answering import DEFAULT_ANSWER_GATE, with_form_defaults

    assert with_form_defaults(EditorConfig(), "chat") == EditorConfig()
    assert with_form_defaults(EditorConfig(), "plain").answer_gate == 0.0
    assert with_form_defaults(EditorConfig(answer_gate=0.7), "plain").answer_gate == 0.7  # given: kept
    with pytest.raises(ValueError, match="chat question or a plain completion"):
        with_form_defaults(EditorConfig(), "poem")
    editor = QFEditor(tiny_qwen, EditorConfig())
    assert editor.config.answer_gate == DEFAULT_ANSWER_GATE
    assert qf_variant("qf", editor, form="chat") is editor
    plain = qf_variant("qf", editor, form="plain")
    assert plain is not editor and plain.config.answer_gate == 0.0 and plain.config.gate == editor.config.gate
    assert qf_variant("qf/e0.9", editor, form="plain").config.answer_gate == 0.9
    method = make_method("qf", editor, Poser(tiny_qwen.tokenizer, "plain"))
    assert method.editor.config.answer_gate == 0.0
