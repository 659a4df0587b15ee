"""The solver-based evaluation system: extract a model from an answer, read it (LP/MPS), solve it
with SCIP in worker processes, match the optimum, compare model graphs, return a reward.

No torch, no Lightning: everything here is plain data so it can cross process boundaries.
"""

import importlib

# name -> submodule: imported on first use, so a process that needs one part (the sandbox server
# imports capture and sandbox only) does not load networkx, the pool or SCIP with it
_EXPORTS = {
    "EvaluationConfig": "config", "MatchRule": "config", "RewardWeights": "config", "SolverLimits": "config",
    "Extraction": "extract", "extract_model": "extract",
    "feedback_message": "feedback",
    "equivalent": "graph", "graph_distance": "graph", "model_graph": "graph",
    "Constraint": "model", "Model": "model", "ModelReadError": "model", "Variable": "model", "read_model": "model",
    "to_lp_text": "model",
    "EvaluatorPool": "pool",
    "Reference": "reward", "ScoreResult": "reward", "objective_matches": "reward", "score_answer": "reward",
    "SolveResult": "solve", "solve_model": "solve",
    "format_summary_table": "summary", "summarize": "summary",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'solver_ppo.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"solver_ppo.evaluation.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Constraint",
    "EvaluationConfig",
    "EvaluatorPool",
    "Extraction",
    "MatchRule",
    "Model",
    "ModelReadError",
    "Reference",
    "RewardWeights",
    "ScoreResult",
    "SolveResult",
    "SolverLimits",
    "Variable",
    "equivalent",
    "extract_model",
    "feedback_message",
    "format_summary_table",
    "graph_distance",
    "model_graph",
    "objective_matches",
    "read_model",
    "score_answer",
    "solve_model",
    "summarize",
    "to_lp_text",
]
