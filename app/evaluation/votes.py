"""Labels from votes: a group of answers to one problem (a policy's samples for one prompt)
proposes the problem's label, and the solver disposes (evaluation.labels=votes).

An answer votes only when the solver accepts its model: an error-free solve to optimal or
infeasible, an objective with a variable term (not a restated number), and a solution that is not
all zeros (the solution of a model that misses its requirements). Votes agree when both are
infeasible or their objectives are equal under the match rule. The plurality is the group's label
when no other answer has as many votes and it holds at least `votes.min_votes` votes and
`votes.share` of the accepted ones. Each answer is then rewarded against the label exactly as
against a reference answer (no graph term: there is no reference model); a group without a label
gives its answers the verdict terms only (format, solved).

Pure functions over ScoreResults scored without a reference: no torch, no second solve, and
never the problems' answers. The trainer's scorer, the engine adapters and `score --labels votes`
call them alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from solver_ppo.evaluation.config import EvaluationConfig, MatchRule, VoteRule
from solver_ppo.evaluation.reward import Reference, ScoreResult, objective_matches, weighted_reward
from solver_ppo.evaluation.solve import SolveResult


@dataclass
class GroupVote:
    label: Reference | None  # the group's label; None where the votes make none
    votes: int  # answers whose model the solver accepted
    plurality: int  # votes for the largest answer
    why: str = ""  # why there is no label ("" with one)


def vote_of(result: ScoreResult) -> Reference | None:
    """The answer's vote (its status and objective), or None where the solver does not accept its model."""
    if result.restated or (result.status == "optimal" and result.n_nonzero == 0):  # a number written down; every variable at 0
        return None
    if result.status == "infeasible":
        return Reference(None, True)
    if result.status == "optimal" and result.objective is not None:
        return Reference(result.objective)
    return None


def same_answer(answer: Reference, reference: Reference, rule: MatchRule) -> bool:
    """Whether `answer` equals `reference` under the match rule (both infeasible, or objectives within tolerance)."""
    if answer.infeasible or reference.infeasible:
        return answer.infeasible and reference.infeasible
    if answer.value is None:
        return False
    return objective_matches(SolveResult("optimal", answer.value), reference.value, False, rule)


def _show(answer: Reference) -> str:
    return "infeasible" if answer.infeasible else f"{answer.value:g}"


def vote(results: Sequence[ScoreResult], rule: VoteRule, match: MatchRule) -> GroupVote:
    """The label that one problem's answers vote for, or why they make none."""
    votes = [v for v in map(vote_of, results) if v is not None]
    if not votes:
        return GroupVote(None, 0, 0, f"no label: none of the {len(results)} answers' models was accepted by the solver")
    support = [sum(same_answer(v, w, match) for v in votes) for w in votes]  # the votes that agree with w
    best = max(range(len(votes)), key=support.__getitem__)
    top, winner = support[best], votes[best]
    rival = next((w for w, n in zip(votes, support) if n == top and not same_answer(w, winner, match)), None)
    if rival is not None:
        return GroupVote(None, len(votes), top, f"no label: a tie, {top} votes each for {_show(winner)} and {_show(rival)}")
    if top < rule.min_votes:
        return GroupVote(None, len(votes), top, f"no label: the plurality ({_show(winner)}) has {top} votes, "
                                                f"fewer than evaluation.votes.min_votes={rule.min_votes}")
    if top < rule.share * len(votes):
        return GroupVote(None, len(votes), top, f"no label: the plurality ({_show(winner)}) has {top} of {len(votes)} "
                                                f"accepted votes, under evaluation.votes.share={rule.share:g}")
    return GroupVote(winner, len(votes), top)


def reward_against(result: ScoreResult, label: Reference | None, config: EvaluationConfig, why: str = "") -> ScoreResult:
    """`result` (scored with no reference) rewarded against `label` as scoring against that answer
    would reward it; `label` None: the verdict terms only, `why` says why there is no label."""
    label = label or Reference()
    matched = not result.restated and objective_matches(SolveResult(result.status, result.objective), label.value,
                                                        label.infeasible, config.match)
    solved = result.status == "optimal" or (label.infeasible and result.status == "infeasible")
    terms = {"format": result.breakdown.get("format", 0.0), "solved": float(solved), "answer": float(matched)}
    if label.expected is None:
        reason = why or result.verdict
    elif matched or result.breakdown.get("format", 0.0) == 0:
        reason = result.verdict
    elif result.restated:
        reason = "the objective has no variable term, so the model only restates a number: no answer credit"
    elif label.infeasible:
        reason = f"the label is infeasible but the model is {result.status}"
    else:
        found = "no objective" if result.objective is None else f"objective {result.objective:g}"
        reason = f"{found} ({result.status}) does not match the label {label.value:g}"
    return dataclasses.replace(result, reward=weighted_reward(terms, config.weights), breakdown=terms, matched=matched,
                               expected=label.expected, reason=reason)


def label_groups(results: Sequence[ScoreResult], groups: Sequence[Hashable], config: EvaluationConfig
                 ) -> tuple[list[ScoreResult], dict[Hashable, GroupVote]]:
    """Each answer rewarded against the label its group voted; `groups[i]` names answer i's group
    (its problem). Returns the rescored answers in order and each group's vote."""
    if len(results) != len(groups):
        raise ValueError(f"{len(results)} answers but {len(groups)} group keys")
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    rescored = list(results)
    votes = {}
    for key, rows in members.items():
        votes[key] = group = vote([results[i] for i in rows], config.votes, config.match)
        for i in rows:
            rescored[i] = reward_against(results[i], group.label, config, group.why)
    return rescored, votes
