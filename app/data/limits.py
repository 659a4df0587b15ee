"""Length limits: which records a run can train on, checked before the model loads and summarized while it trains.

A record longer than its limit (`data.max_prompt_tokens` for PPO prompts, `sft.max_length` for
SFT prompt + answer) is left out. `preflight` measures the first records of the training file
with the tokenizer alone, so a run that could train on nothing (or on too small a share of its
data) stops with the numbers before any weights load. `SkipCounter` counts what each rank leaves
out while training and prints one summary line every `data.skip_report_every` steps instead of
one line per record.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from solver_ppo.data.formats import BadRecord, iter_records, normalize_record
from solver_ppo.data.prompts import build_messages, first_process, fixed_prompt_tokens, sft_target
from solver_ppo.errors import UserError

PREFLIGHT_RECORDS = 1000  # records of data.train measured before the model loads
FIRST_IDS = 5  # ids of skipped records named in a summary line
MIN_RECORDS_FOR_SHARE = 200  # the share of skipped records stops a run only once this many were read


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank q-th percentile (0 < q <= 100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def length_stats(lengths: list[int]) -> str:
    return f"p50 {percentile(lengths, 50):,}, p95 {percentile(lengths, 95):,}, max {max(lengths):,} tokens"


@dataclass
class LengthScan:
    """What `preflight` measured: every usable record's length, the over-length ones, the unusable ones."""

    key: str  # the setting that limits the length: data.max_prompt_tokens | sft.max_length
    limit: int
    lengths: list[int] = field(default_factory=list)
    over: list[tuple[str, int]] = field(default_factory=list)  # (id, length) of the records over the limit
    unusable: Counter = field(default_factory=Counter)  # reason -> records (malformed, nothing to score, ...)

    @property
    def read(self) -> int:
        return len(self.lengths) + sum(self.unusable.values())

    @property
    def skipped(self) -> int:
        return len(self.over) + sum(self.unusable.values())

    def reasons(self) -> list[str]:
        return [f"{n} {reason}" for reason, n in self.unusable.items()]


def preflight(
    items: Iterable, measure: Callable[[object], int], key: str, limit: int, max_fraction: float, source: str,
    what: str,
) -> LengthScan:
    """Measure problems (`measure(problem)` tokens each) against `limit`; `items` are Problems, or
    strings saying why a record is unusable ("malformed", ...).

    A UserError when nothing fits, or when more than `max_fraction` of what was read would be left
    out; else the scan (its over-length records summarized in one line on stdout)."""
    scan = LengthScan(key, limit)
    for problem in items:
        if isinstance(problem, str):
            scan.unusable[problem] += 1
            continue
        length = measure(problem)
        scan.lengths.append(length)
        if length > limit:
            scan.over.append((problem.id, length))
    if not scan.lengths:
        why = ", ".join(scan.reasons()) or "the file is empty"
        raise UserError(f"{source}: no usable record among the first {scan.read} ({why})")
    if len(scan.over) == len(scan.lengths):
        raise UserError(
            f"{source}: no {what} fits {key}={limit}: the shortest of the first {len(scan.lengths)} is "
            f"{min(scan.lengths):,} tokens ({length_stats(scan.lengths)}); raise {key} to at least "
            f"{percentile(scan.lengths, 95):,} to keep 95% of them"
        )
    share = scan.skipped / scan.read
    if share > max_fraction:
        parts = [f"{len(scan.over)} over {key}={limit}"] if scan.over else []
        raise UserError(
            f"{source}: {scan.skipped} of the first {scan.read} records ({share:.0%}) would be left out "
            f"({', '.join(parts + scan.reasons())}; lengths {length_stats(scan.lengths)}), more than "
            f"data.max_skipped_fraction={max_fraction}: raise {key} (to {percentile(scan.lengths, 95):,} keeps 95%) "
            "or data.max_skipped_fraction"
        )
    if scan.over and first_process():  # every rank measured the same records: one line
        lengths, ids = [length for _, length in scan.over], [i for i, _ in scan.over]
        where = f"of the first {len(scan.lengths)} {what}s of {source}"
        print(over_limit_line(key, limit, len(scan.over), len(scan.lengths), lengths, ids, where), flush=True)
    return scan


def over_limit_line(key: str, limit: int, n_over: int, n_read: int, lengths: list[int], ids: list[str],
                    where: str) -> str:
    """One line for many over-length records: count, share, lengths, the key to raise, the first ids."""
    named = ", ".join(ids[:FIRST_IDS]) + (", ..." if len(ids) > FIRST_IDS else "")
    return (f"{n_over} {where} ({n_over / max(1, n_read):.1%}) are over {key}={limit} and left out: "
            f"{length_stats(lengths)}; raise {key} to keep them (first: {named})")


class SkipCounter:
    """One rank's over-length records while training, summarized every `every` steps.

    `fits` is asked for every record; `end_step(totals)` after each step with the counts of all
    ranks (read, skipped) prints this rank's summary when one is due and stops the run once more
    than `max_fraction` of what all ranks read was left out (with at least MIN_RECORDS_FOR_SHARE read)."""

    def __init__(self, key: str, limit: int, max_fraction: float, every: int, what: str, rank: int = 0, world: int = 1):
        self.key, self.limit, self.max_fraction, self.every, self.what = key, limit, max_fraction, every, what
        self.prefix = f"rank {rank}: " if world > 1 else ""
        self.read = self.skipped = 0  # over the whole run (this rank)
        self._lengths: list[int] = []  # of the skipped records since the last summary
        self._ids: list[str] = []
        self._window_read = 0
        self._first_step = 1

    def fits(self, problem_id: str, length: int) -> bool:
        self.read += 1
        self._window_read += 1
        if length <= self.limit:
            return True
        self.skipped += 1
        self._lengths.append(length)
        if len(self._ids) < FIRST_IDS + 1:
            self._ids.append(problem_id)
        return False

    def summary(self, step: int) -> str | None:
        """The line for steps since the last one (None if nothing was left out); starts a new window."""
        line = None
        if self._lengths:
            steps = f"step {step}" if step <= self._first_step else f"steps {self._first_step}-{step}"
            line = self.prefix + over_limit_line(self.key, self.limit, len(self._lengths), self._window_read,
                                                 self._lengths, self._ids, f"{self.what}s in {steps}")
        self._lengths, self._ids, self._window_read, self._first_step = [], [], 0, step + 1
        return line

    def end_step(self, step: int, total_read: int, total_skipped: int) -> None:
        """After step `step` (1-based): the summary when due; a UserError when too much was left out."""
        if self.every and step % self.every == 0 and (line := self.summary(step)):
            print(line, flush=True)
        if total_read >= MIN_RECORDS_FOR_SHARE and total_skipped > self.max_fraction * total_read:
            if line := self.summary(step):
                print(line, flush=True)
            share = total_skipped / total_read
            raise UserError(
                f"{total_skipped} of the {total_read} {self.what}s read in {step} steps ({share:.0%}) were over "
                f"{self.key}={self.limit} and left out, more than data.max_skipped_fraction={self.max_fraction}: "
                f"raise {self.key} or data.max_skipped_fraction"
            )

    def finish(self, step: int) -> None:
        """At the end of training: the summary of the last, unfinished window."""
        if line := self.summary(step):
            print(line, flush=True)


def records_for_preflight(path: str | Path, fmt: str, require_answer: bool = False, records: int = PREFLIGHT_RECORDS):
    """The first `records` records of `path` as `preflight` takes them: Problems, or why one is
    unusable. Malformed lines are not reported here: the training stream reports them with their file:line."""
    path = Path(path)
    for line, value in itertools.islice(iter_records(path), records):
        try:
            if isinstance(value, BadRecord):
                raise value
            problem = normalize_record(value, fmt, f"{path}:{line}", f"{path.stem}:{line}")
        except BadRecord:
            yield "malformed"
            continue
        yield "without an answer to score (SFT-only records)" if require_answer and not problem.scorable else problem


def check_lengths(cfg, encode: Callable[[list[dict]], list[int]], tokenizer, sft: bool,
                  split: str = "train") -> LengthScan:
    """Before the model loads (`encode(messages) -> ids`: the chat format with the tokenizer): the
    limit holds the prompt's fixed part (system prompt, instruction, chat format) with room for a
    question, and enough of the first records of data.`split` (train | val) fit it (`preflight`)."""
    d = cfg.data
    key, limit = ("sft.max_length", cfg.sft.max_length) if sft else ("data.max_prompt_tokens", d.max_prompt_tokens)
    path = getattr(d, split)
    items = list(records_for_preflight(path, d.format, require_answer=not sft and cfg.evaluation.labels == "reference"))

    def prompt_length(problem) -> int:
        return len(encode(build_messages(problem, d.system_prompt, d.instruction)))

    def measure(problem) -> int:
        if not sft:
            return prompt_length(problem)
        try:  # prompt + answer + the stop token
            target = tokenizer.encode(sft_target(problem, d.instruction), add_special_tokens=False)
        except ValueError as err:
            raise UserError(f"data.{split}={path}: {err}") from None
        return prompt_length(problem) + len(target) + 1

    templated = [p for p in items if not isinstance(p, str) and not p.as_written]
    if templated:
        fixed = fixed_prompt_tokens(encode, d.system_prompt, d.instruction)
        if fixed >= limit:
            lengths = [measure(p) for p in templated[:200]]
            name = {None: "(the default LP one)", "": "(none)"}.get(d.instruction, f"'{d.instruction}'")
            raise UserError(
                f"{key}={limit} cannot hold the prompt's fixed part: the system prompt, instruction {name} and chat "
                f"format take {fixed:,} tokens before any question; data.{split}'s {'examples' if sft else 'prompts'} "
                f"would be {length_stats(lengths)}: raise {key} to at least {percentile(lengths, 95):,} or use a "
                "shorter instruction (docs/training.md lists each preset's length)"
            )
    what = "example" if sft else "prompt"
    return preflight(items, measure, key, limit, d.max_skipped_fraction, f"data.{split}={path}", what)
