"""The message a policy reads about its answer: a pure function of the answer's own evaluation.

It reads only the fields of a ScoreResult that do not depend on the reference (status, verdict,
the model's size and objective, and what `evaluation.feedback` gathers), so the same answer gets
the same message whatever it is compared with, and the message never says whether it is right.
"""

from __future__ import annotations

from solver_ppo.evaluation.reward import ScoreResult

ALL_ZERO = "Every variable is 0 in this solution."  # what a solved model whose variables are all 0 is told
NO_SUBSET = "An irreducible infeasible subset: none found within the search's work limit."  # evaluation.feedback_nodes ran out


def feedback_message(result: ScoreResult) -> str:
    """What the evaluation found: status and why; for a solved model its objective and nonzero
    variables; for an infeasible one a subset of constraints and bounds that cannot all hold; for
    an unbounded one a variable that grows without end. The searches behind the last two are bounded
    by SCIP nodes (evaluation.feedback_nodes), so the message is the same on any machine; where the
    wall-clock safety (evaluation.feedback_seconds) stopped one first, the message says so."""
    status = f"Solver status: {result.status}."
    if result.verdict:
        status = f"Solver status: {result.status} ({result.verdict})."
    lines = [status]
    if result.n_vars:
        lines.append(f"The model has {_count(result.n_vars, 'variable')} and {_count(result.n_cons, 'constraint')}.")
    if result.model_objective is not None:
        best = "Objective value" if result.status == "optimal" else "Best objective value found"
        lines.append(f"{best}: {result.model_objective:.10g}.")
        if result.n_nonzero == 0:
            lines.append(ALL_ZERO)
        elif result.nonzero_values:  # gathered with evaluation.feedback only
            values = ", ".join(f"{name} = {value:.10g}" for name, value in result.nonzero_values)
            more = result.n_nonzero - len(result.nonzero_values)
            lines.append(f"Nonzero variables: {values}" + (f", …and {more} more." if more > 0 else "."))
    if result.feedback_time_limit is not None:  # the wall-clock safety, not the work limit: said as such
        what = "an irreducible infeasible subset" if result.status == "infeasible" else "a variable that grows without bound"
        lines.append(f"The search for {what} stopped at its time limit of {result.feedback_time_limit:g} s.")
    elif result.infeasible_subset is not None:
        if result.infeasible_subset:
            lines.append("These constraints and bounds cannot all hold (an irreducible infeasible subset): "
                         + ", ".join(result.infeasible_subset) + ".")
        else:
            lines.append(NO_SUBSET)
    if result.unbounded_variable is not None:
        way = "grow" if result.unbounded_direction > 0 else "decrease"
        lines.append(f"{result.unbounded_variable} can {way} without bound while the objective improves.")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
