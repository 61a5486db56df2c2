#!/usr/bin/env bash
# The project's GPU check, in one go on a lent GPU machine (docs/gpu_check.md):
#
#   GIT_COMMIT=$(git rev-parse HEAD) benchmarks/gpu_check.sh            # on the GPU machine, < 8 min on one H200
#   OUT=/tmp/out RESULTS=/tmp/gpu-smoke benchmarks/gpu_check.sh --cpu-smoke   # the same path on CPU, tiny sizes
#
# OUT (default: a new temp folder; the device runner sets it) receives summary.txt (this script's
# whole output) and results.tgz (the results folder, packed again after every step). RESULTS
# (default benchmarks/results/<gpu>-<date>) receives results.jsonl/.csv (inference), train_step.*
# (training), summary.md/.json, report.md and plots, machine.txt. Model caches stay out of the archive.
# WHEELS (default .whl/): the wheels benchmarks/gpu_wheels.sh downloaded, for a machine without a package index.
# Each step runs under its own timeout, the most important first, so a hang or an OOM costs one step.
set -u
SMOKE=""
if [[ "${1:-}" == "--cpu-smoke" || "${1:-}" == "--dry-run" ]]; then
    SMOKE="--cpu-smoke"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # no spinning thread pool on a shared CPU host
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee "$OUT/summary.txt") 2>&1
cd "$(dirname "$0")/.."
ROOT=$PWD
# wheels brought in WHEELS (default .whl/, from benchmarks/gpu_wheels.sh; no package index there):
# the pinned timm always, every other one only where the machine cannot import it (its own
# torchvision matches its torch)
for wheel in "${WHEELS:-.whl}"/*.whl; do
    [[ -e $wheel ]] || continue
    name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
    case $name in pyyaml) module=yaml ;; scikit_learn) module=sklearn ;; *) module=$name ;; esac
    if [[ $name == timm ]] || ! python -c "import $module" >/dev/null 2>&1; then
        python -m pip install -q --no-index --no-deps --upgrade --root-user-action ignore --target /tmp/site "$wheel" && SITE=/tmp/site && echo "gpu_check: installed $(basename "$wheel")"
    fi
done
export PYTHONPATH=$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [[ -n $SMOKE ]]; then
    GPU=cpu-smoke
else
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
fi
RESULTS=${RESULTS:-$ROOT/benchmarks/results/${GPU:-gpu}-$(date -u +%F)}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$RESULTS/machine.txt" 2>/dev/null \
    || rm -f "$RESULTS/machine.txt"
COMMAND="GIT_COMMIT=$GIT_COMMIT benchmarks/gpu_check.sh $*"
echo "gpu_check: $(date -u +%FT%TZ) commit $GIT_COMMIT results $RESULTS"
python - <<'PY' || { echo "gpu_check: error: the project cannot import here (above); nothing measured"; exit 3; }
import torch, timm
import effvit_deploy.bench.matrix, effvit_deploy.bench.train_step  # every dependency the sweeps need
print("torch", torch.__version__, "timm", timm.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible")
PY

step() {  # step KIND SECONDS
    local kind=$1 limit=$2 start=$SECONDS
    echo "== $kind (limit ${limit} s) $(date -u +%T)"
    timeout -k 10 "$limit" python benchmarks/gpu_check.py "$kind" --out "$RESULTS" $SMOKE --command "$COMMAND"
    echo "== $kind: exit $? after $((SECONDS - start)) s"
    tar czf "$OUT/results.tgz" --exclude=cache -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}

step infer-b64-bf16 150   # expected ~100 s on one H200; the sweeps' caps sum to 565 s, under a 10-minute session limit
step train-b64-bf16 100   # ~50 s
step infer-b1-bf16 70     # ~40 s
step infer-b1-cudagraphs 160  # one compile per model, ~20 s each
step infer-b64-fp32 60    # ~45 s
step summary 25
cat "$RESULTS/summary.md" 2>/dev/null
# last, so the sweeps are packed whatever happens here: the tests that need a GPU (all skip on CPU)
start=$SECONDS
echo "== pytest-cuda (limit 120 s) $(date -u +%T)"
# reverse order runs the compiling tests (test_bench_cudagraphs, test_atrous_paths) last, and -v
# writes each test's outcome as it ends: a run cut by the timeout still says which passed
mapfile -t cuda_tests < <(grep -l "pytest.mark.cuda" tests/test_*.py | sort -r)
timeout -k 10 120 python -m pytest -v -p no:cacheprovider -m cuda "${cuda_tests[@]}" > "$RESULTS/pytest_cuda.txt" 2>&1
echo "== pytest-cuda: exit $? after $((SECONDS - start)) s"
grep -E " (PASSED|FAILED|ERROR|SKIPPED)|^(FAILED|ERROR) | passed| failed| skipped" "$RESULTS/pytest_cuda.txt" | tail -20
tar czf "$OUT/results.tgz" --exclude=cache -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
echo "gpu_check: finished in $SECONDS s; results in $RESULTS and $OUT/results.tgz"
sleep 1  # let tee write the last lines of summary.txt before the machine collects OUT
