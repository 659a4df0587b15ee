"""The Lightning strategy from `trainer.strategy`, shared by `train` and `sft`."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy

from app.config import TrainerSettings


def shards_model(t: TrainerSettings) -> bool:
    """`trainer.strategy=fsdp2`: the modules shard their model across the ranks."""
    return t.strategy == "fsdp2"


def build_strategy(t: TrainerSettings) -> str | ModelParallelStrategy:
    """`fsdp2`: FSDP2 through Lightning's ModelParallelStrategy (data parallel over every device,
    no tensor parallelism; the modules' `configure_model` shards their model). Any other name
    goes to Lightning as it is."""
    if not shards_model(t):
        return t.strategy
    # checkpoints: one file on rank 0 with what the module's state_dict holds (PPO: the trainable weights), as with DDP
    return ModelParallelStrategy(
        data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1, save_distributed_checkpoint=False
    )
