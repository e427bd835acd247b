#!/usr/bin/env bash
# Every GPU test and every benchmark of the project, on one GPU machine, in under 10 minutes.
#
#   benchmarks/gpu_suite.sh              # run the plan below from the repository root (any cwd works)
#   benchmarks/gpu_suite.sh --dry-run    # print the plan and exit 0 (safe on a CPU machine; runs nothing)
#   benchmarks/gpu_suite.sh --only generate,grpo_step   # just these steps (names as in the plan)
#   benchmarks/gpu_suite.sh --plan FILE  # another plan, in the format of plan() below (e.g. other sizes)
#
# Assumes torch (CUDA), triton and transformers are installed (the GPU image has them) and that nothing can be
# downloaded. Missing packages (megatron-core; trl + datasets for the TRL peers; lm-eval for bench_eval.py) come
# as wheels: make them on a machine with internet and the GPU machine's Python (pip download -d DIR
# megatron-core==0.16.1 trl==1.16.0 ...; pip wheel -w DIR lm-eval==0.4.13, as some of its dependencies are sdists),
# carry DIR along, and pass R1_BENCH_WHEELS=DIR: they are installed with pip --no-index --no-deps into
# R1_BENCH_SITE (default /tmp/r1_bench_site), which goes on PYTHONPATH. r1_megatron itself is installed from
# this checkout (`pip install --no-deps --no-build-isolation -e .`, which builds the csrc CUDA extension) unless
# it already imports from here with its extension built.
#
# The first step checks that this python sees a CUDA device; if it does not, nothing else is started. Each
# step runs with its own timeout and the suite keeps going when one fails; the suite as a whole stops
# starting steps once R1_SUITE_BUDGET_S (default 570 s) is spent, so it always ends within 10 minutes: the
# remaining steps are reported as not run. The steps are in order of importance; the timeouts are estimates for
# an H200 (not yet measured there) with room to spare. Outputs, named with the device (R1_BENCH_TAG, default
# the GPU's name from nvidia-smi, e.g. nvidia-h200):
#   benchmarks/results/<step>_<tag>.json       each benchmark's JSON (the GPU tests: a JUnit XML); the folder
#                                              is R1_BENCH_RESULTS when set
#   benchmarks/results/gpu_suite_<tag>/*.log   each step's output
#   benchmarks/results/gpu_suite_<tag>.json    the summary: every step's status, rc, wall seconds, output file
# Exit status: 0 when every step passed or was skipped (an optional file or package is absent), 1 otherwise.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
DRY=0
ONLY=""
PLAN_FILE=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --only) ONLY=${2:?--only needs step names}; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --plan) PLAN_FILE=${2:?--plan needs a file}; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (use --dry-run, --only NAME,..., --plan FILE)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
BUDGET=${R1_SUITE_BUDGET_S:-570}
SITE=${R1_BENCH_SITE:-/tmp/r1_bench_site}
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
TAG=${R1_BENCH_TAG:-$(echo "${gpu_name:-nogpu}" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//;s/-$//')}
RES=${R1_BENCH_RESULTS:-benchmarks/results}
LOGS=$RES/gpu_suite_$TAG
B=benchmarks

# The plan: name | timeout s | python modules it needs (- none) | output file (- only the log) | command.
# $OUT in a command is the step's output file. A step whose command names a benchmarks/bench_*.py that is absent
# is skipped with that reason (benchmarks being added elsewhere are listed before they land).
# tests/test_gpu_suite.py checks that every benchmarks/bench_*.py appears here.
plan() {
  if [[ -n $PLAN_FILE ]]; then grep -v '^\s*\(#\|$\)' "$PLAN_FILE"; return; fi
  cat <<EOF
cuda|60|-|-|$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to this python: use --dry-run on a CPU machine')"
wheels|90|-|-|install_wheels
install|240|-|-|install_r1_megatron
gpu_tests|180|pytest,megatron.core|$RES/gpu_tests_$TAG.xml|TRITON_INTERPRET=0 $PY -m pytest -m gpu tests -q -rs -p no:cacheprovider --junitxml=\$OUT
generate|150|megatron.core|$RES/generate_$TAG.json|$PY $B/bench_generate.py --device cuda --new-tokens 64 --repeats 2 --out \$OUT
generate_kv|120|megatron.core|$RES/generate_kv_$TAG.json|$PY $B/bench_generate.py --device cuda --kv-lengths 64 512 2048 --batch-sizes 8 --new-tokens 32 --repeats 2 --preset tiny-dense tiny-moe qwen2.5-math-1.5b --out \$OUT
generate_dsv3|120|megatron.core|$RES/generate_dsv3_$TAG.json|$PY $B/bench_generate.py --device cuda --arch deepseek-v3 --batch-sizes 1 32 --new-tokens 32 --repeats 2 --out \$OUT
grpo_step|150|megatron.core,trl,datasets|$RES/grpo_step_$TAG.json|$PY $B/bench_grpo_step.py --device cuda --sizes small --warmup 1 --steps 4 --timeout 120 --out \$OUT
decode_attention|90|megatron.core|$RES/decode_attention_$TAG.json|$PY $B/bench_decode_attention.py --device cuda --out \$OUT
grpo_loss|90|megatron.core|$RES/grpo_loss_$TAG.json|$PY $B/bench_grpo_loss.py --device cuda --repeats 20 --out \$OUT
cross_entropy|90|megatron.core|$RES/cross_entropy_$TAG.json|$PY $B/bench_cross_entropy.py --device cuda --repeats 20 --out \$OUT
rmsnorm|60|megatron.core|$RES/rmsnorm_$TAG.json|$PY $B/bench_rmsnorm.py --device cuda --repeats 20 --out \$OUT
group_advantages|60|megatron.core|$RES/group_advantages_$TAG.json|$PY $B/bench_group_advantages.py --device cuda --repeats 20 --out \$OUT
sampling|60|megatron.core|$RES/sampling_$TAG.json|$PY $B/bench_sampling.py --device cuda --out \$OUT
sft|150|megatron.core|$RES/sft_$TAG.json|$PY $B/bench_sft.py --device cuda --sizes small --rounds 1 --warmup 1 --steps 4 --no-plot --out \$OUT
eval|180|megatron.core,lm_eval|$RES/eval_$TAG.json|$PY $B/bench_eval.py --device cuda --preset gpu-1.5b --out \$OUT
serve|240|megatron.core,openai,fastapi,uvicorn|$RES/serve_$TAG.json|$PY $B/bench_serve.py --gpu --no-plot --out \$OUT
moe_ep_scaling|120|megatron.core|$RES/moe_ep_scaling_$TAG.json|$PY -m torch.distributed.run --standalone --nproc-per-node 1 $B/moe_ep_scaling.py --ep 1 --shape dsv3 --experts 32 --layers 4 --tokens-per-rank 4096 --global-tokens 4096 --scaling weak --warmup 1 --repeats 3 --out \$OUT
reward_runner|60|-|-|$PY $B/bench_reward_runner.py
rollout_batch|60|-|-|$PY $B/bench_rollout_batch.py
EOF
}

install_wheels() {  # R1_BENCH_WHEELS=DIR: its wheels into $SITE (on PYTHONPATH for every later step)
  if [[ -z ${R1_BENCH_WHEELS:-} ]]; then echo "R1_BENCH_WHEELS unset: using the installed packages"; return 0; fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$R1_BENCH_WHEELS"/*.whl
}

install_r1_megatron() {  # this checkout, with the csrc CUDA extension, unless it already imports from here
  if "$PY" - "$ROOT" <<'PY'
import sys, pathlib
import r1_megatron, r1_megatron._C, r1_megatron.kernels  # noqa: F401  (the extension is built)
sys.exit(0 if pathlib.Path(r1_megatron.__file__).resolve().is_relative_to(sys.argv[1]) else 1)
PY
  then echo "r1_megatron already imports from $ROOT with r1_megatron._C built"; return 0; fi
  "$PY" -m pip install --no-deps --no-build-isolation -e .
}
export -f install_wheels install_r1_megatron
export PY SITE ROOT

declare -A IMPORTS=()  # module -> yes/no, each checked once
MISSING=""
find_missing() {  # MISSING: the modules of a comma-separated list that do not import
  MISSING=""
  [[ $1 == - ]] && return 0
  local m
  for m in ${1//,/ }; do
    [[ -n ${IMPORTS[$m]:-} ]] || { "$PY" -c "import $m" >/dev/null 2>&1 && IMPORTS[$m]=yes || IMPORTS[$m]=no; }
    [[ ${IMPORTS[$m]} == yes ]] || MISSING+="$m "
  done
}

absent_bench() {  # the first benchmarks/bench_*.py the command names that does not exist
  local f
  for f in $(grep -o "$B/bench_[A-Za-z0-9_]*\.py" <<<"$1"); do [[ -f $f ]] || { echo "$f"; return; }; done
}

selected() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

if [[ $DRY == 1 ]]; then
  echo "gpu_suite plan (device tag: $TAG; suite budget ${BUDGET} s; outputs under $RES/):"
  while IFS='|' read -r name timeout needs out cmd; do
    selected "$name" || continue
    cmd=${cmd//\$OUT/$out}
    absent=$(absent_bench "$cmd")
    echo "step $name (timeout ${timeout} s; needs ${needs}; output ${out}): $cmd${absent:+  [skipped: $absent is absent]}"
  done < <(plan)
  echo "summary: $RES/gpu_suite_$TAG.json"
  exit 0
fi

[[ -n ${R1_BENCH_WHEELS:-} ]] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET R1_MEGATRON_KERNELS  # CPU-test settings: here the Triton kernels run on the GPU
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$LOGS"
records=$LOGS/steps.tsv
: >"$records"
suite_start=$SECONDS
failed=0
stop=""  # why no further step starts

while IFS='|' read -r name timeout needs out cmd; do
  selected "$name" || continue
  cmd=${cmd//\$OUT/$out}
  log=$LOGS/$name.log
  left=$((BUDGET - (SECONDS - suite_start)))
  status="" rc="" wall=0 reason=""
  absent=$(absent_bench "$cmd")
  if [[ -n $absent ]]; then
    status=skipped reason="$absent is absent"
  elif [[ -n $stop ]]; then
    status=not_run reason=$stop
  elif ((left < 15)); then
    status=not_run reason="the suite's ${BUDGET} s budget is spent"
  elif find_missing "$needs" && [[ -n $MISSING ]]; then
    status=skipped reason="needs python modules not importable here: ${MISSING% } (carry wheels: R1_BENCH_WHEELS)"
  else
    ((timeout > left)) && timeout=$left
    echo "== $name (timeout ${timeout} s): $cmd"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$timeout" bash -c "$cmd" >"$log" 2>&1 </dev/null
    rc=$?
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if ((rc == 0)); then status=passed
    elif ((rc == 124 || rc == 137)); then status=timeout reason="killed after ${timeout} s"
    else status=failed; fi
    tail -n 3 "$log"
  fi
  echo "== $name: $status${rc:+ (rc $rc)} ${wall} s${reason:+: $reason}"
  [[ $status == failed || $status == timeout || $status == not_run ]] && failed=1
  [[ $name == cuda && $status != passed ]] && stop="no CUDA device (the cuda step failed)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "${rc:-null}" "$wall" "$out" "$log" "$reason" \
    "$cmd" >>"$records"
done < <(plan)

"$PY" - "$records" "$RES/gpu_suite_$TAG.json" "$TAG" "$BUDGET" <<'PY'
import json, platform, sys, torch
records, summary, tag, budget = sys.argv[1:5]
steps = []
for line in open(records):
    name, status, rc, wall, out, log, reason, cmd = line.rstrip("\n").split("\t")
    steps.append({"name": name, "status": status, "rc": None if rc == "null" else int(rc), "wall_s": float(wall),
                  "output": None if out == "-" else out, "log": log, "reason": reason or None, "command": cmd})
payload = {"suite": "gpu_suite", "tag": tag, "budget_s": float(budget), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "wall_s": round(sum(s["wall_s"] for s in steps), 1),
           "failed": [s["name"] for s in steps if s["status"] in ("failed", "timeout", "not_run")], "steps": steps}
open(summary, "w").write(json.dumps(payload, indent=2) + "\n")
print(f"wrote {summary}: " + ", ".join(f"{s['name']} {s['status']}" for s in steps))
PY
exit $failed
