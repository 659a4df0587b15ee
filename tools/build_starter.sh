#!/usr/bin/env bash
# Rebuilds checkpoints/quickstart-sft, the quick start's starter policy, from nothing (with --revisions, also
# checkpoints/quickstart-sft-revisions, the starter for multi-turn feedback PPO):
# synthetic problems, whose SFT demonstrations come from an imperfect teacher (--teacher-flip) ->
# a tiny ChatGLM whose tokenizer is trained on the problems (not the teacher's answers) -> SFT.
# Took 14 minutes on the quiet 2-core CPU machine (1500 steps × batch 32, 2 torch threads); rebuilds are
# bit-identical (checked: the same model.safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
work=logs/starter
.venv/bin/python -m app make-data --out "$work/data" --train 9000 --heldout 200 --seed 0 --teacher-flip 0.6
.venv/bin/python tools/make_tiny_chatglm.py "$work/tiny" --corpus "$work/data/train.jsonl" --skip-keys demonstration \
  --layers 4 --hidden 128 --heads 4 --kv-groups 2 --ffn 352 --vocab-size 1024 --seed 0
.venv/bin/python -m app sft configs/quickstart_sft.yaml
# --revisions: then the starter taught revisions after feedback (checkpoints/quickstart-sft-revisions):
# SFT continued on 4,000 of the same problems, half of them revision demonstrations (a sound first answer
# followed by the done reply, a flipped one by the reference)
if [[ "${1:-}" == "--revisions" ]]; then
  .venv/bin/python -m app make-data --out "$work/revisions" --train 4000 --heldout 200 --seed 0 --teacher-flip 0.6 \
    --revisions 0.5 --revisions-done
  .venv/bin/python -m app sft configs/quickstart_sft_revisions.yaml
fi
