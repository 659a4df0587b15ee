"""Settings of the evaluation system: solver limits, the answer-matching rule, reward weights.

Plain dataclasses (no torch, no Lightning) so that the evaluator can be configured from the
training config, from the command line, or from Python on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SolverLimits:
    time_limit_s: float = 5.0  # SCIP's own time limit per solve
    wall_limit_s: float = 15.0  # the worker is killed and replaced past this deadline
    memory_limit_mb: int = 2048  # SCIP's memory limit per solve
    max_answer_chars: int = 200_000  # longer answers are rejected before parsing
    max_vars: int = 10_000  # models with more variables are rejected before solving
    max_cons: int = 10_000  # models with more constraints are rejected before solving
    max_nonzeros: int = 200_000  # models with more nonzero coefficients are rejected before solving


@dataclass
class MatchRule:
    """How a predicted optimum is compared with the reference.

    `abs_rel`: |pred - ref| / (|ref| + 1) <= tolerance (the field's default, 1e-6).
    `relative`: |pred - ref| <= tolerance * max(|ref|, 1e-9) (for rounded dataset answers, e.g. 0.05).
    """

    kind: str = "abs_rel"  # abs_rel: |pred - ref| / (|ref| + 1) <= tolerance | relative: |pred - ref| <= tolerance * |ref|
    tolerance: float = 1e-6  # e.g. 0.05 with relative, for datasets whose answers are rounded


@dataclass
class RewardWeights:
    """Weights of the reward terms; they are renormalized to sum to 1 over the terms present."""

    format: float = 0.1  # one model found and read
    solved: float = 0.2  # SCIP proved it optimal (or infeasible, where the reference is)
    answer: float = 0.5  # its optimum matches the reference answer (evaluation.match)
    graph: float = 0.2  # 1 - graph distance to the reference model; only when the problem has one


@dataclass
class CodeLimits:
    """Limits of one code answer's sandboxed process (see app/evaluation/sandbox.py)."""

    wall_s: float = 5.0  # wall-clock deadline from the code's start to its solve call
    memory_mb: int = 4096  # address space of the answer's process, including its solver library (loaded before the clone)
    file_mb: int = 64  # largest file, and the size of the private work directory
    output_kb: int = 1024  # stdout + stderr (discarded); the process is killed past this
    open_files: int = 256  # file descriptors the process may hold open (RLIMIT_NOFILE)
    processes: int = 128  # processes and threads (pids cgroup where available, else RLIMIT_NPROC)
    total_memory_mb: int = 8192  # memory of a sandbox server and all its runners together (memory cgroup where the kernel allows)


@dataclass
class VoteRule:
    """When a group's votes make a label (app/evaluation/votes.py): the plurality holds at least
    `share` of the group's accepted votes and at least `min_votes` of them, and no other answer as many."""

    share: float = 0.5  # the plurality's least share of the accepted votes
    min_votes: int = 2  # the plurality's least number of votes


@dataclass
class EvaluationConfig:
    limits: SolverLimits = field(default_factory=SolverLimits)
    match: MatchRule = field(default_factory=MatchRule)
    weights: RewardWeights = field(default_factory=RewardWeights)
    workers: int = 2  # solver worker processes
    code: CodeLimits = field(default_factory=CodeLimits)
    # How code answers are isolated: 'strict' (namespaces or refuse to run), 'auto' (namespaces
    # where the kernel allows, else 'audit' with a one-line warning), 'audit' (limits + audit hook).
    sandbox: str = "auto"
    # Gather what the feedback message (app/evaluation/feedback.py) shows beyond status and reason:
    # a solution's nonzero values, an infeasible model's irreducible infeasible subset, an unbounded
    # model's growing variable. Off: scoring does no extra SCIP work.
    feedback: bool = False
    # The searches for an infeasible subset and an unbounded direction stop after this many SCIP
    # branch-and-bound nodes in all: a count of work, so an answer gets the same feedback on an idle
    # machine and a busy one. feedback_seconds is only the wall-clock safety above it, and its hit
    # is said as such in the message.
    feedback_nodes: int = 2000  # SCIP nodes per answer for feedback's search (infeasible subset, or unbounded direction)
    feedback_seconds: float = 30.0  # wall-clock safety per answer for that search (far above what the node limit takes)
    feedback_values: int = 10  # nonzero variables kept (and shown) per solution, in the model's order
    # Where the answer to reward against comes from: 'reference' (the problem's answer or reference
    # model) or 'votes' (the plurality of the solver-accepted models among a prompt's samples;
    # the problems' answers are never read for the reward). See docs/algorithms.md, "Labels from votes".
    labels: str = "reference"
    votes: VoteRule = field(default_factory=VoteRule)
