"""Streaming prompt batches for PPO: sharded by rank and dataloader worker, shuffled, resumable.

The stream of one (rank, worker) is a pure function of (file, seed, shard, epoch), so the data
position is a single number, the batches this rank has consumed, and resuming replays the
stream up to that point without keeping anything of it in memory.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from solver_ppo.config import DataSettings
from solver_ppo.data.formats import Problem, check_options, iter_problems
from solver_ppo.errors import UserError

log = logging.getLogger(__name__)


def shuffle_buffer(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Approximate shuffle in O(size) memory: each arriving item swaps out a random buffered one."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def _distributed_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank and world size, else torch.distributed's, else a single process."""
    given = rank is not None or world_size is not None
    if not given and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class PromptDataset(IterableDataset):
    """Batches (lists) of `Problem`s streamed from one file.

    Record k of the file belongs to shard k mod (world_size * workers), shard = rank * workers +
    worker, so every record goes to exactly one (rank, worker) per pass. Within a shard a seeded
    shuffle buffer (seed, epoch, shard) reorders the records. With `loop=True` the passes repeat
    forever (training; a batch may straddle two passes); otherwise one pass, the last batch
    possibly short (evaluation).

    `start_batch` resumes after that many batches of this rank: the DataLoader takes batch j
    from worker j mod workers, so each worker skips its own share of items (and the workers'
    roles rotate) so that the rank's batch sequence continues exactly where it stopped.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        fmt: str = "auto",
        on_bad_line: str = "skip",
        shuffle_buffer: int = 0,
        seed: int = 0,
        loop: bool = False,
        start_batch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        require_answer: bool = False,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"data file not found: {self.path}")
        self.batch_size = batch_size
        self.fmt = fmt
        self.on_bad_line = on_bad_line
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.loop = loop
        self.start_batch = start_batch
        self.require_answer = require_answer  # PPO: records with nothing to score are bad records
        self.rank, self.world_size = _distributed_rank_world(rank, world_size)
        self.bad_records = 0  # reported and skipped in this process (each worker counts its own)

    def _report(self, message: str) -> None:
        self.bad_records += 1
        log.warning(message)

    def _quiet(self, message: str) -> None:
        """Later passes meet the same bad records again: count them once, report them once."""

    def _problems(self, shard: int, n_shards: int, skip: int) -> Iterator[Problem]:
        """This shard's problems, pass after pass, after skipping `skip` of them."""
        epoch, pass_length = 0, None
        while True:
            if pass_length is not None and skip >= pass_length:  # a whole pass to skip: no need to read it
                skip -= pass_length
                epoch += 1
                continue
            rng = random.Random(f"{self.seed}/{epoch}/{shard}/{n_shards}")
            report = self._report if pass_length is None else self._quiet
            records = iter_problems(self.path, self.fmt, self.on_bad_line, report, shard=(shard, n_shards),
                                    require_answer=self.require_answer)
            count = 0
            for problem in shuffle_buffer(records, self.shuffle_buffer, rng):
                count += 1
                if skip:
                    skip -= 1
                    continue
                yield problem
            if not self.loop:
                return
            if count == 0:
                raise UserError(
                    f"{self.path}: shard {shard} of {n_shards} (ranks x dataloader workers) got no problems; "
                    f"the file needs at least {n_shards} valid records, or use fewer workers"
                )
            pass_length = count
            epoch += 1

    def __iter__(self) -> Iterator[list[Problem]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # A fresh DataLoader asks worker 0 first, but batch `start_batch` belongs to worker
        # start_batch mod workers: rotate the roles so the round-robin order carries on.
        worker = (worker + self.start_batch) % workers
        shard, n_shards = self.rank * workers + worker, self.world_size * workers
        own_batches = max(0, -(-(self.start_batch - worker) // workers))  # ceil((start - worker) / workers)
        batch: list[Problem] = []
        for problem in self._problems(shard, n_shards, skip=own_batches * self.batch_size):
            batch.append(problem)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _as_is(batch: list[Problem]) -> list[Problem]:
    return batch


def _every_nth(batch: list[Problem], start: int, step: int) -> list[Problem]:
    return batch[start::step]


class PromptDataModule(pl.LightningDataModule):
    """Train (endless, shuffled) and optional val (one pass, in order) batches of `prompts_per_step` Problems.

    The data position is the number of training batches consumed, counted as the trainer moves
    each batch to the device; Lightning saves it in checkpoints through `state_dict()` and hands it
    back through `load_state_dict()` before the dataloaders are built.

    `whole_val_on_every_rank`: every rank reads the same val batches, `prompts_per_step` x world
    size problems each, and gets every world-size-th problem of each, instead of a shard of its
    own: all ranks then see the same number of batches (a sharded model needs every rank in each
    forward), and a rank may get an empty one.
    """

    def __init__(self, settings: DataSettings, prompts_per_step: int, seed: int = 0, whole_val_on_every_rank: bool = False,
                 require_answer: bool = False):
        super().__init__()
        check_options(settings.format, settings.on_bad_line)
        for key, path in (("data.train", settings.train), ("data.val", settings.val)):
            if path and not Path(path).is_file():
                raise UserError(f"{key}: data file not found: {path}")
        if settings.shuffle_buffer < 0 or settings.num_workers < 0:
            raise UserError(
                f"data.shuffle_buffer ({settings.shuffle_buffer}) and data.num_workers ({settings.num_workers}) "
                "must not be negative"
            )
        self.settings = settings
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.whole_val_on_every_rank = whole_val_on_every_rank
        self.require_answer = require_answer  # PPO: SFT-only records (no answer to score) are refused
        self.train_batches = 0

    def _loader(self, dataset: PromptDataset, collate=_as_is) -> DataLoader:
        workers = self.settings.num_workers
        return DataLoader(dataset, batch_size=None, collate_fn=collate, num_workers=workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        s = self.settings
        dataset = PromptDataset(
            s.train,
            self.prompts_per_step,
            fmt=s.format,
            on_bad_line=s.on_bad_line,
            shuffle_buffer=s.shuffle_buffer,
            seed=self.seed,
            loop=True,
            start_batch=self.train_batches,
            require_answer=self.require_answer,
        )
        return self._loader(dataset)

    def val_dataloader(self) -> DataLoader | list:
        s = self.settings
        if not s.val:
            return []  # Lightning runs no validation
        if self.whole_val_on_every_rank:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
            dataset = PromptDataset(s.val, self.prompts_per_step * world, fmt=s.format, on_bad_line=s.on_bad_line,
                                    rank=0, world_size=1, require_answer=self.require_answer)
            return self._loader(dataset, partial(_every_nth, start=rank, step=world))
        dataset = PromptDataset(s.val, self.prompts_per_step, fmt=s.format, on_bad_line=s.on_bad_line,
                                require_answer=self.require_answer)
        return self._loader(dataset)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self.train_batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"train_batches": self.train_batches}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_batches = int(state_dict["train_batches"])
