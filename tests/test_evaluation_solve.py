"""solve_model on a reused SCIP instance: same results as a fresh one, limits still enforced,
recycling after many objects or an error, one instance per thread."""

import random
import threading

import pytest

from builders import market_split
from solver_ppo.evaluation import Constraint, Model, SolverLimits, Variable, read_model, solve_model
from solver_ppo.evaluation import solve as solve_module




def knapsack(rng: random.Random, n: int, vtype: str) -> Model:
    w = [rng.randint(5, 60) for _ in range(n)]
    return Model(
        [Variable(f"take[{j}]", vtype, 0.0, rng.choice([1.0, 2.0, float("inf")]), float(rng.randint(-5, 90))) for j in range(n)],
        [Constraint("cap", {f"take[{j}]": float(w[j]) for j in range(n)}, "<=", float(sum(w) // 3)),
         Constraint("count", {f"take[{j}]": 1.0 for j in range(n)}, ">=", float(rng.randint(0, n)))],
        rng.choice(["max", "min"]),
        obj_constant=float(rng.randint(-3, 3)),
    )


def varied_models() -> list[Model]:
    """LPs and MILPs (some infeasible: count > capacity allows), plus the special statuses."""
    rng = random.Random(7)
    models = [knapsack(rng, rng.randint(3, 25), rng.choice("CIB")) for _ in range(40)]
    models += [
        read_model("max x + y\nst\n c: x - y <= 1\nend"),  # unbounded
        read_model("min x\nst\n c: x <= -1\nend"),  # infeasible (x >= 0)
        read_model("max x\nst\n c1: y >= 2\n c2: y <= 1\nend"),  # SCIP says inf_or_unbd; the zero-objective re-solve: infeasible
        read_model("min 2 x + 3 y + 5\nst\n c: x + y = 4\nbounds\n -2 <= x <= 10\ngeneral\n y\nend"),
    ]
    return models


def fresh_solve(model: Model, limits: SolverLimits):
    solve_module.reset_scip()
    return solve_module.solve_model(model, limits)


def outcome(r) -> tuple:
    return r.status, r.objective, r.values, r.reason, r.n_vars, r.n_cons


def test_reused_instance_gives_the_same_results_as_fresh_ones():
    models, limits = varied_models(), SolverLimits()
    solve_module.reset_scip()
    reused = [solve_model(m, limits) for m in models]
    instance = solve_module._local.scip
    # the inf_or_unbd model is built twice (second time with a zero objective), on the same instance
    assert instance is not None and solve_module._local.objects == sum(m.n_vars + m.n_cons for m in models) + 2 + 2
    fresh = [fresh_solve(m, limits) for m in models]
    assert [outcome(r) for r in reused] == [outcome(r) for r in fresh]
    statuses = [r.status for r in reused]
    assert {"optimal", "infeasible", "unbounded"} <= set(statuses)
    assert statuses[-4:] == ["unbounded", "infeasible", "infeasible", "optimal"]
    assert reused[-1].objective == pytest.approx(2 * 4 + 3 * 0 + 5)


def test_limits_are_enforced_on_a_reused_instance_and_do_not_leak():
    easy = read_model("max 3 x + 2 y\nst\n c1: x + y <= 4\n c2: x + 3 y <= 6\nbounds\n x <= 3\nend")
    solve_module.reset_scip()
    assert solve_model(easy, SolverLimits(time_limit_s=60)).objective == pytest.approx(11.0)
    instance = solve_module._local.scip
    hard = solve_model(read_model(market_split()), SolverLimits(time_limit_s=0.5))
    assert hard.status == "timelimit" and "0.5 s" in hard.reason
    assert 0.4 <= hard.solve_seconds < 5  # the earlier 60 s limit did not stay set
    after = solve_model(easy, SolverLimits(time_limit_s=60))
    assert (after.status, after.objective) == ("optimal", pytest.approx(11.0))
    assert after.solve_seconds < hard.solve_seconds  # the clock restarts with each problem
    assert solve_module._local.scip is instance  # one instance served all three
    over = solve_model(easy, SolverLimits(max_vars=1))
    assert (over.status, over.reason) == ("rejected", "model has 2 variables, over the limit of 1")


def test_instance_is_replaced_after_enough_objects(monkeypatch):
    monkeypatch.setattr(solve_module, "_RECYCLE_OBJECTS", 10)
    m = read_model("max x + y\nst\n c1: x + 2 y <= 4\n c2: 3 x + y <= 6\nend")  # 4 objects; optimum 2.8
    solve_module.reset_scip()
    seen = []
    for _ in range(5):
        r = solve_model(m, SolverLimits())
        assert r.objective == pytest.approx(2.8)
        seen.append(solve_module._local.scip)
    # 4 + 4 fit under 10, the third solve starts a new instance, and so on
    assert [s is seen[0] for s in seen] == [True, True, False, False, False]
    assert seen[2] is seen[3] and seen[4] is not seen[2]


def test_an_error_drops_the_instance_and_the_next_solve_is_clean():
    solve_module.reset_scip()
    ok = read_model("max x\nst\n c: x <= 2\nend")
    assert solve_model(ok, SolverLimits()).objective == pytest.approx(2.0)
    bad = Model([Variable("x", "C", 0.0, 1.0, 1.0)], [Constraint("c", {"x": float("inf")}, "<=", 1.0)], "max")
    r = solve_model(bad, SolverLimits())
    assert r.status == "error" and "SCIP failed" in r.reason and (r.n_vars, r.n_cons) == (1, 1)
    assert solve_module._local.scip is None
    again = solve_model(ok, SolverLimits())
    assert (again.status, again.objective) == ("optimal", pytest.approx(2.0))


def test_each_thread_has_its_own_instance():
    models, limits = varied_models(), SolverLimits()
    expected = [outcome(fresh_solve(m, limits)) for m in models]
    got: dict[int, list] = {}

    def run(k: int) -> None:
        got[k] = [outcome(solve_model(m, limits)) for m in models]
        got[k].append(id(solve_module._local.scip))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0][:-1] == expected and got[1][:-1] == expected
    assert got[0][-1] != got[1][-1]


def test_quadratic_models_on_a_reused_instance():
    """The auxiliary objective variable and row are counted and cleared with the problem."""
    quad = read_model("min -2 x - 4 y + [ 2 x ^ 2 + 2 y ^ 2 ] / 2 + 5\nst\n c: x + y <= 2\nend")  # optimum 0.5
    bilinear = read_model("max x + y\nst\n e: [ x * y ] <= 4\n c: x - y = 0\nbounds\n x <= 10\nend")  # x = y = 2: 4
    linear = read_model("max 3 x + 2 y\nst\n c1: x + y <= 4\n c2: x + 3 y <= 6\nbounds\n x <= 3\nend")  # 11
    models = [quad, bilinear, linear, quad]
    solve_module.reset_scip()
    reused = [solve_model(m, SolverLimits()) for m in models]
    assert solve_module._local.objects == sum(m.n_vars + m.n_cons for m in models) + 2 * 2  # aux variable + row, twice
    fresh = [fresh_solve(m, SolverLimits()) for m in models]
    assert [(r.status, r.objective) for r in reused] == [(r.status, r.objective) for r in fresh]
    assert [r.objective for r in reused] == [pytest.approx(0.5, abs=1e-6), pytest.approx(4.0, abs=1e-6), pytest.approx(11.0), pytest.approx(0.5, abs=1e-6)]
    assert set(reused[0].values) == {"x", "y"}
