"""The solver-based evaluation system: extract a model from an answer, read it (LP/MPS), solve it
with SCIP in worker processes, match the optimum, compare model graphs, return a reward.

No torch, no Lightning: everything here is plain data so it can cross process boundaries.
"""

from app.evaluation.config import EvaluationConfig, MatchRule, RewardWeights, SolverLimits
from app.evaluation.extract import Extraction, extract_model
from app.evaluation.graph import equivalent, graph_distance, model_graph
from app.evaluation.model import Constraint, Model, ModelReadError, Variable, read_model, to_lp_text
from app.evaluation.pool import EvaluatorPool
from app.evaluation.reward import Reference, ScoreResult, objective_matches, score_answer
from app.evaluation.solve import SolveResult, solve_model
from app.evaluation.summary import format_summary_table, summarize

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
