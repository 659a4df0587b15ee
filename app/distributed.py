"""The Lightning strategy from `trainer.strategy`, shared by `train` and `sft`."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy

from app.config import TrainerSettings


def build_strategy(t: TrainerSettings) -> str | ModelParallelStrategy:
    """`fsdp2`: FSDP2 through Lightning's ModelParallelStrategy (data parallel over every device,
    no tensor parallelism; PPOModule.configure_model shards the policy). Any other name goes to
    Lightning as it is."""
    if t.strategy != "fsdp2":
        return t.strategy
    # one file on rank 0 with the trainable weights only (PPOModule.state_dict), as with DDP
    return ModelParallelStrategy(
        data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1, save_distributed_checkpoint=False
    )
