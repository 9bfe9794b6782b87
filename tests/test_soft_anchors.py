"""Soft anchors (memory.soft_anchors): the anchors as a penalty in the solve's metric, not held rows."""

import pytest
import torch

from agent.ledger_editor import _acting
from bench.edits import qf_settings
from memory.answering import PAPER_RULE
from memory.fact import FactRows, with_anchors
from memory.joint import JointQF
from memory.preserve import PreservingMetric
from memory.qf import qf_residual, qf_solve
from memory.soft_anchors import scaled_anchors

N, D = 10, 24


def rows_with_anchors(T, A, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    rows = FactRows("a", tuple(range(T)), r(T, D), r(T, N), r(T, D), r(T, N), torch.ones(T, dtype=torch.float64))
    return with_anchors(rows, r(A, D), r(A, N)) if A else rows


def random_metric(seed=0):
    K = torch.randn(D, 3 * D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return PreservingMetric(K @ K.T / K.shape[1], 10.0)


def dense_metric(metric):
    return torch.eye(D, dtype=torch.float64) if metric is None else metric._cholesky @ metric._cholesky.T


def by_hand(W0, facts, weight, metric, ridge):
    """The soft-anchored solve with M' = M + Â Â^T formed densely and inverted directly."""
    fact_rows = [rows.num_rows - rows.anchors for rows in facts]
    U = torch.cat([rows.U_plain[:T] for rows, T in zip(facts, fact_rows)]).T  # (D, T)
    R = torch.cat([qf_residual(W0.double(), r.U[:T].T, r.V[:T].T, r.U_plain[:T].T, r.V_plain[:T].T)
                   for r, T in zip(facts, fact_rows)], 1)
    M = dense_metric(metric)
    A = torch.cat([rows.U_plain[T:] for rows, T in zip(facts, fact_rows)])  # (A, D)
    cost = torch.einsum("ad,ad->a", A, torch.linalg.solve(M, A.T).T)
    A_hat = A * (weight / cost).sqrt()[:, None]
    M_soft = M + A_hat.T @ A_hat
    left, right = qf_solve(R, U, None, ridge, Z=torch.linalg.solve(M_soft, U))
    return left @ right


@pytest.mark.parametrize("with_metric", [False, True])
def test_the_incremental_woodbury_solve_equals_the_dense_metric_one(with_metric):
    W0 = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    metric = random_metric() if with_metric else None
    facts = [rows_with_anchors(2, 3, 1), rows_with_anchors(1, 0, 2), rows_with_anchors(3, 2, 3)]
    joint = JointQF(W0, "w", metric=metric, anchor_weight=4.0, ridge=1e-6)
    for i, rows in enumerate(facts):
        joint.add(i, rows)
    assert joint.num_rows == 6  # the anchors take no row
    dW = joint.solve().dense().double()
    expected = by_hand(W0, facts, 4.0, metric, 1e-6)
    assert torch.allclose(dW, expected, atol=1e-8 * float(expected.abs().max()))


def test_the_fact_s_rows_are_met_and_the_anchors_move_less_as_the_weight_grows():
    W0 = torch.randn(N, D, generator=torch.Generator().manual_seed(7))
    rows = rows_with_anchors(2, 4, 11)
    U, anchors = rows.U_plain[:2].T, rows.U_plain[2:].T
    R = qf_residual(W0.double(), rows.U[:2].T, rows.V[:2].T, U, rows.V_plain[:2].T)
    moved = []
    for weight in (0.0, 1.0, 10.0, 1000.0):
        joint = JointQF(W0, "w", anchor_weight=weight, ridge=1e-9)
        joint.add("f", rows if weight else FactRows("a", rows.targets[:2], rows.U[:2], rows.V[:2], rows.U_plain[:2],
                                                     rows.V_plain[:2], rows.significance[:2]))
        dW = joint.solve().dense().double()
        assert torch.allclose(dW @ U, R, atol=1e-6 * float(R.abs().max()))  # the fact is written as before
        moved.append(float((dW @ anchors).norm()))
    assert moved[0] > moved[1] > moved[2] > moved[3] and moved[3] < 0.02 * moved[0]  # toward the held anchor


def test_the_weight_is_in_units_of_what_the_metric_charges():
    metric = random_metric(3)
    keys = torch.randn(5, D, dtype=torch.float64)
    A_hat, Y = scaled_anchors(keys, 2.5, metric.keys)
    assert torch.allclose(torch.einsum("ad,ad->a", A_hat, Y), torch.full((5,), 2.5, dtype=torch.float64))
    assert torch.allclose(Y, metric.keys(A_hat))
    with pytest.raises(ValueError, match="> 0"):
        scaled_anchors(keys, 0.0, None)
    with pytest.raises(ValueError, match="zero"):
        scaled_anchors(torch.zeros(1, D), 1.0, None)


def test_undo_is_exact_and_the_order_does_not_matter():
    W0 = torch.randn(N, D, generator=torch.Generator().manual_seed(9))
    metric = random_metric(4)
    facts = {k: rows_with_anchors(2, 2, seed) for k, seed in (("a", 21), ("b", 22), ("c", 23))}
    joint = JointQF(W0, "w", metric=metric, anchor_weight=3.0)
    for key in ("a", "b", "c"):
        joint.add(key, facts[key])
    joint.remove("b")
    other = JointQF(W0, "w", metric=metric, anchor_weight=3.0)
    for key in ("c", "a"):
        other.add(key, facts[key])
    assert torch.allclose(joint.solve().dense(), other.solve().dense(), atol=1e-6)
    joint.rename("a", 1)
    joint.remove(1)
    joint.remove("c")
    assert joint.solve().rank == 0 and joint._S.shape == (0, 0) and joint._X.shape == (0, 0)


def test_soft_anchors_are_recorded_refused_with_spread_and_named_in_the_bench():
    W0 = torch.randn(N, D)
    assert JointQF(W0, "w", anchor_weight=2.0).solver["soft_anchors"] == "2.0"
    with pytest.raises(ValueError, match=">= 0"):
        JointQF(W0, "w", anchor_weight=-1.0)
    with pytest.raises(ValueError, match="anchor keys"):
        JointQF(W0, "w").add_residual("f", torch.zeros(N, 1), torch.ones(1, D), torch.ones(1),
                                      anchor_keys=torch.ones(1, D))
    assert qf_settings("qf/a3/b10") == {"anchors": 3, "soft_anchors": 10.0}
    assert PAPER_RULE["soft_anchors"] == 0.0


def test_the_ledger_compares_only_the_settings_that_act():
    now = {"preserve": 0.0, "gain": 1.0, "condition": 0.0, "keys_data": None, "question_keys": 1.0,
           "soft_anchors": 5.0, "spread": 1}
    recorded = dict(now, question_keys=0.0, soft_anchors=0.0)
    # with preserve 0 the question keys do nothing; without anchors their softness does nothing
    assert _acting(now, {"anchors": 0}) == _acting(recorded, {"anchors": 0})
    assert _acting(now, {"anchors": 3}) != _acting(recorded, {"anchors": 3})
    assert _acting(now, {"near_questions": 2}) != _acting(recorded, {"near_questions": 2})
    assert _acting(dict(now, preserve=10.0), {}) != _acting(dict(recorded, preserve=10.0), {})
