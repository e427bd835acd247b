#!/usr/bin/env bash
# GRPO (or, with ALGORITHM=sft, SFT) on one node: one process per GPU under torchrun.
#
#   examples/launch_1node.sh [RECIPE] [key=value ...]        e.g.
#   examples/launch_1node.sh examples/qwen2.5-math-7b_1node.yaml rollout.max_batch_size=128
#   ALGORITHM=sft examples/launch_1node.sh examples/distill_qwen2.5-math-7b_1node.yaml
#   RESUME=runs/qwen2.5-math-7b-r1zero examples/launch_1node.sh   # continue a run from its last checkpoint
#
# NPROC (default 8) sets the processes per node; the recipe's tp x pp x ep layout must divide it.
# SIGTERM (kill, docker stop) reaches every rank through torchrun: the trainer checkpoints after the current step
# and exits. torchrun SIGKILLs its workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds after forwarding the SIGTERM
# (30 s by default, and always 30 s on torch releases without --shutdown-timeout), so it is raised here.
set -euo pipefail

RECIPE=examples/qwen2.5-math-7b_1node.yaml
if [[ $# -gt 0 && "$1" != *=* ]]; then
  RECIPE=$1
  shift
fi
NPROC=${NPROC:-8}
ALGORITHM=${ALGORITHM:-grpo}  # `r1-megatron train ALGORITHM`: grpo or sft
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-900}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # Megatron's TP/SP comm overlap assumes 1

if [[ -n "${RESUME:-}" ]]; then
  ARGS=(--resume "$RESUME" "$@")  # the run directory's own config.yaml, plus any overrides given here
else
  ARGS=(--config "$RECIPE" "$@")
fi
exec torchrun --standalone --nproc-per-node="$NPROC" -m r1_megatron train "$ALGORITHM" "${ARGS[@]}"
