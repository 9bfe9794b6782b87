"""The QF solve (memory.qf) and the joint solve over facts (memory.joint)."""

import pytest
import torch

from memory.fact import FactRows
from memory.joint import JointQF
from memory.qf import qf_delta, qf_residual, qf_solve

N, D = 12, 40


def random_case(T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, D, generator=g, dtype=torch.float64)
    U, Up = torch.randn(D, T, generator=g, dtype=torch.float64), torch.randn(D, T, generator=g, dtype=torch.float64)
    V, Vp = torch.randn(N, T, generator=g, dtype=torch.float64), torch.randn(N, T, generator=g, dtype=torch.float64)
    return W, U, V, Up, Vp


def test_constraint_is_met():
    W, U, V, Up, Vp = random_case()
    dW = qf_delta(W, U, V, Up, Vp)
    target = W @ U + V - Vp
    err = ((W + dW) @ Up - target).norm() / target.norm()
    assert err < 1e-6


def test_solution_is_minimum_norm():
    W, U, V, Up, Vp = random_case()
    dW = qf_delta(W, U, V, Up, Vp, ridge=0.0)
    # Any other solution differs by Z with Z Up = 0; the minimum-norm one is orthogonal to it.
    Q, _ = torch.linalg.qr(Up, mode="complete")
    null = Q[:, Up.shape[1]:]  # (D, D - T), columns orthogonal to Up's span
    Z = torch.randn(N, null.shape[1], dtype=torch.float64) @ null.T
    assert (Z @ Up).abs().max() < 1e-10
    assert torch.linalg.norm(dW) < torch.linalg.norm(dW + Z)
    assert abs(float((dW * Z).sum())) < 1e-8  # orthogonal to the null-space directions
    assert (dW @ null).abs().max() < 1e-8  # dW lives in the row space of Up^T


def test_factors_reproduce_delta_and_rank():
    W, U, V, Up, Vp = random_case(T=4)
    left, right = qf_solve(qf_residual(W, U, V, Up, Vp), Up)
    assert left.shape == (N, 4) and right.shape == (4, D)
    dW = qf_delta(W, U, V, Up, Vp)
    assert torch.allclose(left @ right.double(), dW)
    assert torch.linalg.matrix_rank(dW) <= 4


def test_zero_significance_rows_are_unconstrained():
    W, U, V, Up, Vp = random_case(T=5)
    sig = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    dW = qf_delta(W, U, V, Up, Vp, significance=sig)
    kept = [0, 2, 4]
    expected = qf_delta(W, U[:, kept], V[:, kept], Up[:, kept], Vp[:, kept])
    assert torch.allclose(dW, expected, atol=1e-10)
    target = W @ U + V - Vp
    miss = ((W + dW) @ Up - target)[:, [1, 3]].norm() / target[:, [1, 3]].norm()
    assert miss > 1e-2  # dropped rows are not met


def test_positive_weights_do_not_change_an_exact_solve():
    W, U, V, Up, Vp = random_case(T=5)
    a = qf_delta(W, U, V, Up, Vp, significance=torch.tensor([1.0, 5, 0.5, 20, 1]), ridge=1e-12)
    b = qf_delta(W, U, V, Up, Vp, ridge=1e-12)
    assert torch.allclose(a, b, atol=1e-7)


def test_ridge_keeps_duplicate_rows_finite_and_trades_accuracy():
    W, U, V, Up, Vp = random_case(T=3)
    # The same fact twice: a singular Gram matrix. Without ridge Cholesky fails.
    U2, V2, Up2, Vp2 = (torch.cat([x, x], 1) for x in (U, V, Up, Vp))
    with pytest.raises(torch.linalg.LinAlgError):
        qf_delta(W, U2, V2, Up2, Vp2, ridge=0.0)
    dW = qf_delta(W, U2, V2, Up2, Vp2)
    assert torch.isfinite(dW).all()
    assert torch.allclose(dW, qf_delta(W, U, V, Up, Vp), rtol=1e-4, atol=1e-8)
    errors = []
    for ridge in (1e-8, 1e-4, 1e-1, 10.0):
        d = qf_delta(W, U, V, Up, Vp, ridge=ridge)
        target = W @ U + V - Vp
        errors.append(float(((W + d) @ Up - target).norm() / target.norm()))
    assert errors == sorted(errors) and errors[0] < 1e-6 and errors[-1] > 0.1


def test_bad_significance_is_refused():
    W, U, V, Up, Vp = random_case(T=3)
    with pytest.raises(ValueError):
        qf_delta(W, U, V, Up, Vp, significance=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError):
        qf_delta(W, U, V, Up, Vp, significance=torch.tensor([1.0, 1.0]))


def fact_rows(T, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return FactRows("a", tuple(range(T)), r(T, D), r(T, N), r(T, D), r(T, N), torch.ones(T, dtype=torch.float64))


def joint_with(W0, facts):
    joint = JointQF(W0, "w")
    for key, rows in facts:
        joint.add(key, rows)
    return joint


def test_joint_solve_is_order_independent_and_equals_the_stacked_solve():
    W0 = torch.randn(N, D)
    facts = [(i, fact_rows(3 + i, seed=i)) for i in range(4)]
    a = joint_with(W0, facts).solve().dense()
    b = joint_with(W0, facts[::-1]).solve().dense()
    assert (a - b).abs().max() < 1e-10
    stack = lambda name: torch.cat([getattr(rows, name) for _, rows in facts]).T  # noqa: E731
    dense = qf_delta(W0, stack("U"), stack("V"), stack("U_plain"), stack("V_plain"))
    assert (a - dense).abs().max() < 1e-10


def test_removing_a_fact_equals_never_adding_it_and_shares_sum_to_delta():
    W0 = torch.randn(N, D)
    facts = [(i, fact_rows(3, seed=i)) for i in range(4)]
    joint = joint_with(W0, facts)
    delta = joint.solve()
    total = sum(joint.share(delta, k).dense() for k in joint.keys)
    assert (total - delta.dense()).abs().max() < 1e-10
    joint.remove(1)
    without = joint_with(W0, [f for f in facts if f[0] != 1])
    assert torch.allclose(joint._gram, without._gram, rtol=1e-13, atol=1e-12)
    assert (joint.solve().dense() - without.solve().dense()).abs().max() < 1e-12


def test_audit_norms_and_cosine_match_dense():
    from memory.audit import col_norms, cosine, row_norms, top_k
    from memory.delta import LowRankDelta

    a = LowRankDelta(torch.randn(N, 3, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64), "w", "")
    b = LowRankDelta(torch.randn(N, 2, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64), "w", "")
    da, db = a.dense(), b.dense()
    assert torch.allclose(row_norms(a), da.norm(dim=1))
    assert torch.allclose(col_norms(a), da.norm(dim=0))
    assert abs(cosine(a, b) - float((da * db).sum() / (da.norm() * db.norm()))) < 1e-10
    assert abs(cosine(a, a) - 1.0) < 1e-10
    assert top_k(row_norms(a), 2)[0][0] == int(da.norm(dim=1).argmax())
