"""The Lightning strategy from `trainer.strategy` and the Trainer's construction, shared by `train` and `sft`."""

from __future__ import annotations

import logging
import os
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import ModelParallelStrategy

from solver_ppo.config import TrainerSettings
from solver_ppo.errors import LaunchError, UserError

# Lightning strategies (by name prefix) whose sharding the app's modules cannot work with, and why.
UNSUPPORTED_STRATEGIES = {
    "fsdp": (
        "Lightning's FSDP1 gathers parameters only inside the wrapped module's forward, while PPO samples and scores "
        "through the inner modules and runs several forward/backward passes per step, and `sft` writes its model "
        "from unsharded weights"
    ),
    "deepspeed": (
        "ZeRO moves gradients into its own partitions, so the check that skips non-finite gradients would see none, "
        "stage 3 partitions the weights that sampling merges LoRA into, and `sft` writes its model from unsharded weights"
    ),
}


def shards_model(t: TrainerSettings) -> bool:
    """`trainer.strategy=fsdp2`: the modules shard their model across the ranks."""
    return t.strategy == "fsdp2"


def check_strategy(t: TrainerSettings) -> None:
    """Fail before any model is loaded on a strategy the modules cannot run under."""
    for prefix, why in UNSUPPORTED_STRATEGIES.items():
        if t.strategy.startswith(prefix) and not shards_model(t):
            raise UserError(
                f"trainer.strategy={t.strategy} is not supported: {why}. "
                "Use trainer.strategy=fsdp2 (FSDP2, sharded) or ddp (or auto on one device)."
            )


def launcher_world_size() -> tuple[int, str] | None:
    """How many processes a launcher started for this run, and which launcher; None without one.

    torchrun and `fabric run` (the current name of `lightning run model`, which starts torchrun)
    set WORLD_SIZE, as does Lightning's own launcher in the processes it starts; a SLURM batch job
    sets SLURM_NTASKS (not in an interactive allocation, where Lightning launches itself)."""
    env = os.environ
    if "WORLD_SIZE" in env:
        launcher = "fabric run" if env.get("LT_CLI_USED") else "torchrun" if "TORCHELASTIC_RUN_ID" in env else "launcher"
        return int(env["WORLD_SIZE"]), launcher
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(env["SLURM_NTASKS"]), "SLURM"
    return None


def check_launcher(t: TrainerSettings) -> None:
    """A launcher's process count must be the config's devices x nodes: otherwise each process
    would run alone, all as rank 0, racing for the same log directory."""
    launched = launcher_world_size()
    if launched is None:
        return
    world, launcher = launched
    if world != t.devices * t.num_nodes:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or world)
        configured = t.devices * t.num_nodes
        raise LaunchError(
            f"{launcher} started {world} processes, but trainer.devices x trainer.num_nodes = {t.devices} x "
            f"{t.num_nodes} = {configured}: set trainer.devices={local} trainer.num_nodes={max(1, world // local)} "
            f"(and trainer.strategy=ddp or fsdp2), or launch as many processes as the config's {configured}"
        )


def build_strategy(t: TrainerSettings) -> str | ModelParallelStrategy:
    """`fsdp2`: FSDP2 through Lightning's ModelParallelStrategy (data parallel over every device,
    no tensor parallelism; the modules' `configure_model` shards their model). Other names go to
    Lightning as they are, but FSDP1 and DeepSpeed (`check_strategy`), and never with a launcher
    that started another number of processes (`check_launcher`)."""
    check_strategy(t)
    check_launcher(t)
    if not shards_model(t):
        return t.strategy
    # checkpoints: one file on rank 0 with what the module's state_dict holds (PPO: the trainable weights), as with DDP
    return ModelParallelStrategy(
        data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1, save_distributed_checkpoint=False
    )


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def lightning_trainer(**kwargs) -> pl.Trainer:
    """`pl.Trainer(**kwargs)`, with Lightning's objections to the trainer settings (accelerator,
    devices, strategy, precision) as one clear line: build it before loading any model."""
    # Lightning 2.x on torch 2.13 warns about its own use of a torch pytree API at every batch,
    # and advertises its cloud logger at every Trainer construction
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    try:
        return pl.Trainer(**kwargs)
    except (MisconfigurationException, ValueError) as err:
        raise UserError(f"trainer settings (trainer.accelerator/devices/strategy/precision): {err}") from None


def leave_process_group(settle_s: float = 0.2) -> None:
    """End this rank's part of a multi-process run so that its exit cannot abort (no-op alone).

    The backends run collectives on their own threads, and a thread that drops the last reference
    to a finished collective's tensors needs the GIL for it. If Python is already shutting down by
    then, the thread is ended inside C++ and the process aborts (SIGABRT, "terminate called without
    an active exception") after all its work is done. Destroying the process group does not stop
    those threads while the model still holds it, so: a barrier (no tensors of ours) once every
    rank is done, `settle_s` with the GIL released for the threads to let go, then the group is
    destroyed. A 2-rank gloo script exiting right after its collectives (the group held, as a
    model holds it) aborted in 3 of 40 runs, 1 of 60 with the barrier alone, 0 of 60 with this
    call beside two busy loops (4 of 30 without it); with collectives still in flight, 8 of 8 and 0.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    nccl = dist.get_backend() == "nccl"
    dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)
    time.sleep(settle_s)
    dist.destroy_process_group()
