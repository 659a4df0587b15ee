"""Which LP-format constructs each installed solver reads, and what optimum it finds, next to ours.

    .venv/bin/python tools/probe_lp_readers.py            # a markdown table on stdout

Each construct is a tiny LP file. Every reader that is importable (gurobipy, pyscipopt, coptpy,
highspy; the ones missing are left out) reads and solves it; a cell is the optimum found, or
"refused" / the solver's status. Our column is `read_model` + `solve_model`, or the reason we
refuse. The table in docs/lp-mps-support.md was made with this script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzing import quiet  # noqa: E402  (C-level stdout and stderr silenced, as the fuzzing's solver runs)
from solver_ppo.evaluation import ModelReadError, SolverLimits, read_model, solve_model  # noqa: E402

BASE_ST = " c1: x + y <= 4\n c2: x + 3 y <= 6\n"
CASES = {
    "basic (Maximize, Subject To, Bounds, End)": f"Maximize\n obj: 3 x + 2 y\nSubject To\n{BASE_ST}Bounds\n x <= 3\nEnd\n",
    "repeated constraint names": "Maximize\n obj: 3 x + 2 y\nSubject To\n c: x + y <= 4\n c: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "unnamed constraints, `max`/`st`/`end`": "max\n 3 x + 2 y\nst\n x + y <= 4\n x + 3 y <= 6\nbounds\n x <= 3\nend\n",
    "`s.t.`, `such that`": "Maximize\n 3 x + 2 y\ns.t.\n c1: x + y <= 4\nsuch that\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "senses `=<`, `=>`, `<`, `>`": "Maximize\n 3 x + 2 y\nSubject To\n c1: x + y =< 4\n c2: - x - 3 y => -6\n c3: x < 3\n c4: y > 0\nEnd\n",
    "ranged row `lo <= expr <= hi`": "Maximize\n 3 x + 2 y\nSubject To\n c1: -2 <= x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "constant on the left `x + y + 1 <= 5`": "Maximize\n 3 x + 2 y\nSubject To\n c1: x + y + 1 <= 5\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "constant on the left, binding `x + y + 1 <= 4`": "Maximize\n 3 x + 2 y\nSubject To\n c1: x + y + 1 <= 4\nBounds\n x <= 3\nEnd\n",
    "variable on the right `x <= 4 - y`": "Maximize\n 3 x + 2 y\nSubject To\n c1: x <= 4 - y\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "objective constant": "Maximize\n obj: 3 x + 2 y + 7\nSubject To\n" + BASE_ST + "Bounds\n x <= 3\nEnd\n",
    "objective constant first `- 4.75 - 4 x - 9 y`": "Maximize\n obj: - 4.75 - 4 x - 9 y\nSubject To\n c1: 7.75 y + x = -9.25\nBounds\n y <= 1\n x free\nEnd\n",
    "objective constant last `- 4 x - 9 y - 4.75`": "Maximize\n obj: - 4 x - 9 y - 4.75\nSubject To\n c1: 7.75 y + x = -9.25\nBounds\n y <= 1\n x free\nEnd\n",
    "`Minimise` / `Maximise`": "Minimise\n obj: - x - y\nSubject To\n c1: x + y <= 4\nEnd\n",
    "no spaces in the objective only `8.5q - 7x`": "Minimize\n obj: 8.5q - 7x\nSubject To\n c: q + x >= 1\nBounds\n x <= 3\nEnd\n",
    "`3 * x` (a star in a linear term)": "Maximize\n obj: 3 * x + 2 * y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "name ending in an unmatched `]`": "Maximize\n obj: 3 x] + 2 y\nSubject To\n c1: x] + y <= 4\n c2: x] + 3 y <= 6\nBounds\n x] <= 3\nEnd\n",
    "expression over several lines": "Maximize\n obj: 3 x\n   + 2 y\nSubject To\n c1: x\n  + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "comments `\\`": "\\ a comment\nMaximize \\ trailing\n 3 x + 2 y\nSubject To\n" + BASE_ST + "Bounds\n x <= 3 \\ bound\nEnd\n",
    "`x[0,1]`-style names": "Maximize\n 3 x[0,1] + 2 y.a\nSubject To\n c[1]: x[0,1] + y.a <= 4\n c[2]: x[0,1] + 3 y.a <= 6\nBounds\n x[0,1] <= 3\nEnd\n",
    "no spaces `3x+2y`": "Maximize\n 3x+2y\nSubject To\n c1: x+y<=4\n c2: x+3y<=6\nBounds\n x<=3\nEnd\n",
    "bounds `free`, `-inf`, `+infinity`, `1e30`": "Minimize\n x - y\nSubject To\n c1: x - y >= -4\n c2: x + y <= 10\nBounds\n x free\n -inf <= y <= +infinity\n x >= -1e30\nEnd\n",
    "fixed bound `x = 2`": "Maximize\n 3 x + 2 y\nSubject To\n" + BASE_ST + "Bounds\n x = 2\nEnd\n",
    "negative upper bound only `x <= -1`": "Maximize\n x + y\nSubject To\n c1: y <= 2\nBounds\n x <= -1\nEnd\n",
    "Generals / Binaries": "Maximize\n 3 x + 2 y + b\nSubject To\n c1: x + y <= 4.5\n c2: x + 3 y <= 6\nBounds\n x <= 3\nGenerals\n x y\nBinaries\n b\nEnd\n",
    "Integers / Bin": "Maximize\n 3 x + 2 y + b\nSubject To\n c1: x + y <= 4.5\n c2: x + 3 y <= 6\nBounds\n x <= 3\nIntegers\n x y\nBin\n b\nEnd\n",
    "Lazy Constraints section": "Maximize\n 3 x + 2 y\nSubject To\n c1: x + y <= 4\nLazy Constraints\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n",
    "User Cuts section": "Maximize\n 3 x + 2 y\nSubject To\n" + BASE_ST + "User Cuts\n u1: x + y <= 4\nBounds\n x <= 3\nEnd\n",
    "quadratic objective `[ ... ] / 2`": "Minimize\n obj: - 2 x - 4 y + [ 2 x ^ 2 + 2 y ^ 2 ] / 2\nSubject To\n c1: x + y <= 2\nEnd\n",
    "quadratic objective, `[ ... ]` without `/ 2`": "Minimize\n obj: - 2 x - 4 y + [ x ^ 2 + y ^ 2 ]\nSubject To\n c1: x + y <= 2\nEnd\n",
    "quadratic constraint `[ ... ]`": "Maximize\n x + y\nSubject To\n q: [ x ^ 2 + y ^ 2 ] <= 2\nEnd\n",
    "nonconvex quadratic constraint": "Minimize\n x + y\nSubject To\n q: [ x * y ] >= 4\nBounds\n x <= 10\n y <= 10\nEnd\n",
    "product outside brackets `x * y`": "Minimize\n x + y\nSubject To\n q: x * y >= 4\nBounds\n x <= 10\n y <= 10\nEnd\n",
    "indicator `b = 1 -> x + y <= 1`": "Maximize\n x + y + b\nSubject To\n c1: x + y <= 4\n i: b = 1 -> x + y <= 1\nBinaries\n b\nEnd\n",
    "Semi-continuous section": "Minimize\n 3 x + 4 y\nSubject To\n c1: x + y >= 1\nBounds\n 2 <= x <= 5\n y <= 1\nSemi-continuous\n x\nEnd\n",
    "SOS section": "Maximize\n x + 2 y\nSubject To\n c1: x + y <= 4\nBounds\n x <= 3\n y <= 3\nSOS\n s1: S1 :: x:1 y:2\nEnd\n",
    "General Constraints section (Gurobi)": "Maximize\n z\nSubject To\n c1: x + y <= 4\nBounds\n x <= 3\n y <= 3\nGeneral Constraints\n g: z = MAX ( x , y )\nEnd\n",
    "PWLObj section (Gurobi)": "Minimize\n y\nSubject To\n c1: x >= 1\nBounds\n x <= 3\nPWLObj\n x: (0, 0) (2, 1) (3, 4)\nEnd\n",
    "multi-objectives (Gurobi)": "Maximize multi-objectives\n o1: Priority=2 Weight=1 AbsTol=0 RelTol=0\n x + y\nSubject To\n c1: x + y <= 4\nEnd\n",
    "no `End`": f"Maximize\n obj: 3 x + 2 y\nSubject To\n{BASE_ST}Bounds\n x <= 3\n",
}


def run_gurobi(path):
    import gurobipy as gp

    with gp.Env(params={"OutputFlag": 0}) as env, gp.read(str(path), env) as m:
        m.optimize()
        return m.ObjVal if m.Status == gp.GRB.OPTIMAL else f"status {m.Status}"


def run_scip(path):
    from pyscipopt import Model

    m = Model()
    m.hideOutput()
    m.readProblem(str(path))
    m.optimize()
    return m.getObjVal() if m.getStatus() == "optimal" else m.getStatus()


def run_copt(path):
    import coptpy as cp

    env = cp.Envr()
    m = env.createModel("probe")
    m.setParam("Logging", 0)
    m.read(str(path))
    m.solve()
    return m.objval if m.status == cp.COPT.OPTIMAL else f"status {m.status}"


def run_highs(path):
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if h.readModel(str(path)) != highspy.HighsStatus.kOk:
        return "refused"
    h.run()
    status = h.getModelStatus()
    return h.getInfo().objective_function_value if status == highspy.HighsModelStatus.kOptimal else h.modelStatusToString(status)


def run_ours(path):
    try:
        model = read_model(Path(path).read_text(), "lp")
    except ModelReadError as err:
        return f"refused: {err}"
    r = solve_model(model, SolverLimits())
    return r.objective if r.status == "optimal" else r.status


def cell(fn, path) -> str:
    try:
        with quiet():
            out = fn(path)
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - a reader's refusal is the answer here
        return "refused"
    return f"{out:.6g}" if isinstance(out, float) else str(out)


def main() -> None:
    readers = {}
    for name, fn, module in (("Gurobi", run_gurobi, "gurobipy"), ("SCIP", run_scip, "pyscipopt"), ("COPT", run_copt, "coptpy"), ("HiGHS", run_highs, "highspy")):
        try:
            __import__(module)
            readers[name] = fn
        except ImportError:
            print(f"({module} not importable: {name} left out)", file=sys.stderr)
    readers["ours"] = run_ours
    print("| construct | " + " | ".join(readers) + " |")
    print("|---" * (len(readers) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, text in CASES.items():
            path = Path(tmp) / "probe.lp"
            path.write_text(text)
            row = [cell(fn, path) if name != "ours" else run_ours(path) for name, fn in readers.items()]
            row = [r if not isinstance(r, float) else f"{r:.6g}" for r in row]
            print(f"| {label} | " + " | ".join(str(r).replace("|", "\\|") for r in row) + " |")


if __name__ == "__main__":
    main()
