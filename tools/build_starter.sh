#!/usr/bin/env bash
# Rebuilds a quick-start starter policy from nothing: synthetic problems whose SFT demonstrations come
# from an imperfect teacher (--teacher-flip) -> a tiny ChatGLM with a tokenizer trained here -> SFT.
#
#   bash tools/build_starter.sh                             checkpoints/quickstart-sft (LP answers)
#   bash tools/build_starter.sh --revisions                 also checkpoints/quickstart-sft-revisions
#   bash tools/build_starter.sh --answer-format pyscipopt   checkpoints/quickstart-sft-pyscipopt
#   bash tools/build_starter.sh --answer-format pyscipopt --revisions   also checkpoints/quickstart-sft-pyscipopt-revisions
#
# LP: the tokenizer learns from the problems and their LP reference models, not the teacher's answers.
# Took 14 minutes on the quiet 2-core CPU machine (1500 steps x batch 32, 2 torch threads); rebuilds are
# bit-identical (the same model.safetensors).
# pyscipopt: the tokenizer also learns from the programs (a real model's tokenizer knows Python), which
# keeps a program at about 240 tokens instead of 500. Took 22 to 27 minutes (1500 steps x batch 32); rebuilds
# are bit-identical too.
set -euo pipefail
cd "$(dirname "$0")/.."
format=lp revisions=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --revisions) revisions=1; shift ;;
    --answer-format) format="$2"; shift 2 ;;
    *) echo "build_starter.sh: unknown option $1 (use --revisions or --answer-format lp|pyscipopt)" >&2; exit 2 ;;
  esac
done
case "$format" in
  lp)
    work=logs/starter
    .venv/bin/python -m app make-data --out "$work/data" --train 9000 --heldout 200 --seed 0 --teacher-flip 0.6
    .venv/bin/python tools/make_tiny_chatglm.py "$work/tiny" --corpus "$work/data/train.jsonl" --skip-keys demonstration \
      --layers 4 --hidden 128 --heads 4 --kv-groups 2 --ffn 352 --vocab-size 1024 --seed 0
    .venv/bin/python -m app sft configs/quickstart_sft.yaml ;;
  pyscipopt)
    work=logs/starter-pyscipopt
    .venv/bin/python -m app make-data --out "$work/data" --train 9000 --heldout 200 --seed 0 --teacher-flip 0.6 \
      --answer-format pyscipopt
    .venv/bin/python tools/make_tiny_chatglm.py "$work/tiny" --corpus "$work/data/train.jsonl" \
      --layers 4 --hidden 128 --heads 4 --kv-groups 2 --ffn 352 --vocab-size 2048 --seed 0
    .venv/bin/python -m app sft configs/quickstart_sft_pyscipopt.yaml ;;
  *) echo "build_starter.sh: --answer-format $format has no starter (lp or pyscipopt)" >&2; exit 2 ;;
esac
# --revisions: then the starter taught revisions after feedback, SFT continued on 4,000 of the same problems,
# half of them revision demonstrations (the teacher's answer, the evaluation's real feedback on it, then the
# corrected answer where the first was flawed, else the done reply).
# LP (checkpoints/quickstart-sft-revisions): the flawed first answers are the flipped ones (--teacher-flip).
# pyscipopt (checkpoints/quickstart-sft-pyscipopt-revisions): 40% of the teacher's programs carry an error of
# a real LLM's kinds (--teacher-errors 0.4, the mix measured on ORLM-LLaMA-3-8B), in the revision
# demonstrations' first answers and in the plain ones, so the starter also errs that way.
if [[ $revisions == 1 ]]; then
  case "$format" in
    lp)
      .venv/bin/python -m app make-data --out "$work/revisions" --train 4000 --heldout 200 --seed 0 --teacher-flip 0.6 \
        --revisions 0.5 --revisions-done
      .venv/bin/python -m app sft configs/quickstart_sft_revisions.yaml ;;
    pyscipopt)
      .venv/bin/python -m app make-data --out "$work/revisions" --train 4000 --heldout 200 --seed 0 --teacher-errors 0.4 \
        --answer-format pyscipopt --revisions 0.5 --revisions-done
      .venv/bin/python -m app sft configs/quickstart_sft_pyscipopt_revisions.yaml ;;
  esac
fi
