"""From one answer to one reward: extract, read, solve, match the optimum, compare the graphs."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from solver_ppo.evaluation.config import EvaluationConfig, MatchRule, RewardWeights, SolverLimits
from solver_ppo.evaluation.capture import SUPPORTED, CaptureOutcome, orient
from solver_ppo.evaluation.extract import extract_model
from solver_ppo.evaluation.graph import graph_distance
from solver_ppo.evaluation.model import Model, ModelReadError, read_model
from solver_ppo.evaluation.solve import SearchTimeLimit, SolveResult, growing_variable, infeasible_subset, solve_model

_INFEASIBLE_WORDS = ("infeasible", "no best solution", "no feasible solution", "no solution")


@dataclass
class Reference:
    value: float | None = None  # the optimum, when known
    infeasible: bool = False
    model_text: str | None = None  # a reference model (LP or MPS): its optimum and graph are used

    @classmethod
    def from_answer(cls, answer: str | float | int | None, model_text: str | None = None) -> Reference:
        """Dataset answers: 219816.0, "219816.0", "$1,234.50", "No Best Solution", "infeasible", None."""
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            return cls(None, False, model_text)
        if isinstance(answer, bool):
            raise ValueError(f"reference answer {answer!r} is not a number or 'infeasible'")
        if isinstance(answer, (int, float)):
            return cls(float(answer), False, model_text)
        text = answer.strip().lower().rstrip(".")
        if text in _INFEASIBLE_WORDS:
            return cls(None, True, model_text)
        cleaned = re.sub(r"^\$|\s", "", text.replace("$", ""))
        if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?", cleaned):
            cleaned = cleaned.replace(",", "")
        try:
            value = float(cleaned)
        except ValueError:
            raise ValueError(f"reference answer {answer!r} is not a number or 'infeasible'") from None
        if not math.isfinite(value):
            raise ValueError(f"reference answer {answer!r} is not finite")
        return cls(value, False, model_text)

    @property
    def expected(self) -> float | str | None:
        """The answer to match, as result rows show it: the optimum, "infeasible", or None (unknown)."""
        return "infeasible" if self.infeasible else self.value

    @property
    def key(self) -> str | None:
        """Cache key of the reference model (hash of its text)."""
        return None if self.model_text is None else hashlib.sha256(self.model_text.encode()).hexdigest()


@dataclass
class ScoreResult:
    reward: float  # in [0, 1]
    breakdown: dict[str, float]  # format, solved, answer, graph (graph only with a reference model)
    status: str  # solver status, or no_model | several | parse_error | rejected
    objective: float | None = None
    matched: bool = False
    graph_distance: float | None = None
    final_answer: float | None = None
    reason: str = ""
    solve_seconds: float = 0.0
    n_vars: int = 0
    n_cons: int = 0
    expected: float | str | None = None  # the reference answer it was scored against: its optimum, "infeasible", or None (unknown)
    # The answer's own verdict, the same whatever the reference (all that app/evaluation/feedback.py reads):
    verdict: str = ""  # why it has its status, about the answer alone (`reason` adds the comparison with the reference)
    error_line: int | None = None  # the line a syntax error, exception or read error names (of the code, or of the model text)
    model_objective: float | None = None  # the optimum (or best found) of the model in the sense it was written
    n_nonzero: int | None = None  # nonzero variables in that solution (nonzero_values may hold fewer); None: no solution
    # ... and with evaluation.feedback only:
    nonzero_values: list[tuple[str, float]] = field(default_factory=list)  # the first evaluation.feedback_values, in the model's order
    infeasible_subset: list[str] | None = None  # infeasible: an irreducible infeasible subset as named in the answer; [] when none was found within evaluation.feedback_nodes
    unbounded_variable: str | None = None  # unbounded: a variable that grows (unbounded_direction 1) or falls (-1) without end
    unbounded_direction: int = 0
    feedback_time_limit: float | None = None  # the seconds after which the wall-clock safety stopped that search (None: it did not)
    # What a vote among answers (app/evaluation/votes.py) needs to know beyond status, objective and n_nonzero:
    restated: bool = False  # the objective has no variable term: its optimum is a number the answer wrote down


def weighted_reward(terms: dict[str, float], weights: RewardWeights) -> float:
    """The reward in [0, 1]: the terms' weighted mean, the weights renormalized over the terms present."""
    chosen = {k: getattr(weights, k) for k in terms}
    total = sum(chosen.values())
    reward = sum(chosen[k] * terms[k] for k in terms) / total if total > 0 else 0.0
    return min(max(reward, 0.0), 1.0)


def objective_matches(pred: SolveResult, ref_value: float | None, ref_infeasible: bool, rule: MatchRule) -> bool:
    if ref_infeasible:
        return pred.status == "infeasible"
    if pred.status != "optimal" or pred.objective is None or ref_value is None:
        return False
    diff = abs(pred.objective - ref_value)
    if rule.kind == "abs_rel":
        return diff / (abs(ref_value) + 1.0) <= rule.tolerance
    if rule.kind == "relative":
        return diff <= rule.tolerance * max(abs(ref_value), 1e-9)
    raise ValueError(f"unknown match rule {rule.kind!r}; use 'abs_rel' or 'relative'")


# Reference models read and solved in this process, by text hash: (model or None, solve result or None, error)
_references: dict[str, tuple[Model | None, SolveResult | None, str]] = {}


def reference_model(reference: Reference, limits: SolverLimits, solve: bool) -> tuple[Model | None, SolveResult | None, str]:
    """The reference's parsed model (and its solve, when asked), cached per process by text hash."""
    key = reference.key
    if key is None:
        return None, None, ""
    model, result, error = _references.get(key, (None, None, ""))
    if model is None and not error:
        try:
            model = read_model(reference.model_text)
        except ModelReadError as err:
            error = f"reference model not readable: {err}"
    if model is not None and result is None and solve:
        result = solve_model(model, limits)
    _references[key] = (model, result, error)
    return model, result, error


def resolve_reference(reference: Reference, limits: SolverLimits) -> Reference:
    """A reference with its optimum filled in from its model, when only the model is given."""
    if reference.value is not None or reference.infeasible or reference.model_text is None:
        return reference
    _, result, _ = reference_model(reference, limits, solve=True)
    if result is None:
        return reference
    return reference_from_solve(reference, result)


def reference_from_solve(reference: Reference, result: SolveResult) -> Reference:
    if result.status == "optimal":
        return Reference(result.objective, False, reference.model_text)
    if result.status == "infeasible":
        return Reference(None, True, reference.model_text)
    return reference


def restates_a_number(model: Model, ref_model: Model | None) -> str:
    """Why the model earns no answer credit, or "": an objective without a variable term makes the
    model's optimum a number it wrote down, not one it derived. Allowed only when the reference
    model is such a model too (a known optimum alone does not allow it)."""
    if not model.objective_is_constant or (ref_model is not None and ref_model.objective_is_constant):
        return ""
    return "the objective has no variable term, so the model only restates a number: no answer credit"


def run_code(code: str, library: str | None, config: EvaluationConfig) -> CaptureOutcome:
    """A code answer's model, captured in this process's sandbox for `library`, the solver library
    it imports (extraction found it; app/evaluation/sandbox.py)."""
    from solver_ppo.evaluation.sandbox import sandbox_for

    return sandbox_for(config.sandbox, config.code, config.limits, library if library in SUPPORTED else None).run(code)


def score_answer(answer: str | bytes, reference: Reference, config: EvaluationConfig, solve_reference: bool = True) -> ScoreResult:
    """Score one answer; never raises on a bad answer (the reason says what went wrong).

    A reference given only as a model is solved here once per process (solve_reference=False:
    the caller, e.g. the pool, has already tried and its optimum stays unknown).
    """
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", errors="replace")
    limits = config.limits
    if solve_reference:
        reference = resolve_reference(reference, limits)
    ref_model, _, ref_error = reference_model(reference, limits, solve=False)
    has_graph = reference.model_text is not None
    terms = {"format": 0.0, "solved": 0.0, "answer": 0.0}
    if has_graph:
        terms["graph"] = 0.0

    def done(status: str, verdict: str, reason: str | None = None, **kw) -> ScoreResult:
        """`verdict` says why the answer has its status; `reason` (default: the verdict) also
        says how it compares with the reference."""
        reward = weighted_reward(terms, config.weights)
        reason = verdict if reason is None else reason
        if ref_error:
            reason = f"{reason}; {ref_error}" if reason else ref_error
        return ScoreResult(reward, dict(terms), status, reason=reason, expected=reference.expected,
                           verdict=verdict, **kw)

    if len(answer) > limits.max_answer_chars:
        return done("rejected", f"answer has {len(answer)} characters, over the limit of {limits.max_answer_chars}")
    ext = extract_model(answer)
    if ext.status == "none":
        return done("no_model", "no model found", final_answer=ext.final_answer)
    if ext.status == "several":
        return done("several", f"{ext.candidates} different models in one answer; write exactly one", final_answer=ext.final_answer)
    text, fmt, sense_free = ext.text, ext.fmt, False
    if ext.fmt == "python":  # code answer: run in the sandbox, the model it builds is what counts
        outcome = run_code(ext.text, ext.library, config)
        if outcome.status != "captured":
            return done(outcome.status, f"{outcome.library or ext.library}: {outcome.reason}", final_answer=ext.final_answer,
                        error_line=outcome.line)
        text, fmt, sense_free = outcome.model_text, outcome.fmt, outcome.sense_free
    try:
        model = read_model(text, fmt)
    except ModelReadError as err:  # a captured model's lines are not the answer's
        return done("parse_error", f"model not readable: {err}", final_answer=ext.final_answer,
                    error_line=err.line if ext.fmt != "python" else None)
    written_sense = model.sense
    if sense_free:
        model = orient(model, ref_model.sense if ref_model is not None else None)
    terms["format"] = 1.0
    distance = None
    if has_graph and ref_model is not None:
        distance = graph_distance(model, ref_model)
        terms["graph"] = 1.0 - distance
    result = solve_model(model, limits)
    restated = restates_a_number(model, ref_model)
    matched = objective_matches(result, reference.value, reference.infeasible, config.match) and not restated
    terms["solved"] = float(result.status == "optimal" or (reference.infeasible and result.status == "infeasible"))
    terms["answer"] = float(matched)
    reason = result.reason
    if restated:
        reason = restated + (f" ({result.reason})" if result.reason else "")
    elif reference.infeasible and result.status != "infeasible":
        reason = f"the reference is infeasible but the model is {result.status}" + (f" ({result.reason})" if result.reason else "")
    elif result.status == "optimal" and not matched:
        if reference.value is None:
            reason = f"objective {result.objective:g}, but the reference optimum is unknown"
        else:
            reason = f"objective {result.objective:g} does not match the reference {reference.value:g}"
    flipped = model.sense != written_sense  # oriented to the reference: the answer's own objective has the other sign
    nonzero = None  # a solution's nonzero variables, in the model's order (cheap: counted on every answer)
    if result.status in ("optimal", "timelimit"):
        nonzero = [(v.name, result.values[v.name]) for v in model.variables if abs(result.values.get(v.name, 0.0)) > 1e-9]
    return done(
        result.status,
        result.reason,
        reason,
        objective=result.objective,
        matched=matched,
        graph_distance=distance,
        final_answer=ext.final_answer,
        solve_seconds=result.solve_seconds,
        n_vars=result.n_vars,
        n_cons=result.n_cons,
        model_objective=-result.objective if flipped and result.objective is not None else result.objective,
        restated=bool(model.objective_is_constant),
        n_nonzero=None if nonzero is None else len(nonzero),
        **(solver_feedback(model, result, nonzero, config) if config.feedback else {}),
    )


def solver_feedback(model: Model, result: SolveResult, nonzero: list[tuple[str, float]] | None, config: EvaluationConfig) -> dict:
    """The ScoreResult fields that only feedback needs: the solution's nonzero values, an
    infeasible subset, a variable that grows without end (the last two cost more SCIP work)."""
    if nonzero is not None:
        return {"nonzero_values": nonzero[: config.feedback_values]}
    try:
        if result.status == "infeasible":
            return {"infeasible_subset": infeasible_subset(model, config.limits, config.feedback_seconds, config.feedback_nodes) or []}
        if result.status == "unbounded":
            found = growing_variable(model, result, config.limits, config.feedback_seconds, config.feedback_nodes)
            return {} if found is None else {"unbounded_variable": found[0], "unbounded_direction": found[1]}
    except SearchTimeLimit:
        return {"feedback_time_limit": config.feedback_seconds, **({"infeasible_subset": []} if result.status == "infeasible" else {})}
    return {}
