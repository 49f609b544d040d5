#!/usr/bin/env bash
# Prove the grader's GPU path in one run: grade lab02's and lab03's reference solutions and lab02's
# blank release with DLMI_DEVICE=cuda, and print the timings; then (unless SWEEP=0) the per-GPU
# sweep of `make bench-gpu`: hand-ins per minute of lab03 with 1, 2, 4, 8 kernels sharing a GPU.
#
# The GPU image has torch, torchvision, scikit-learn, psutil — but no jupyter, ipykernel, nbgrader,
# medmnist or pydicom. Prepare the missing wheels on a machine with network, from the repo root:
#     ../shared/gpu/grader-wheels.sh .whl pydicom && echo '/.whl/' >> .git/info/exclude
# then, on the GPU machine, from the repo root, with `.whl` carried along:
#     bash autograder/gpu_check.sh            # results land in $OUT (or /tmp/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD PATH=/tmp/site/bin:$PATH
else
  export PYTHONPATH=$PWD/src:$PWD
fi
export DLMI_DEVICE=cuda OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
grader=(python3 -m autograder.cli)

nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, nbgrader, ipykernel, medmnist; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'nbgrader', nbgrader.__version__)"
python3 -c "from autograder import sandbox; print('isolation:', sandbox.default_level())"

subs=$(mktemp -d)
mkdir -p "$subs/lab02-convolution" "$subs/lab03-cnn-classifier"
cp solutions/lab02-convolution/lab02-convolution.ipynb "$subs/lab02-convolution/solution.ipynb"
cp labs/lab02-convolution/lab02-convolution.ipynb "$subs/lab02-convolution/blank.ipynb"
cp solutions/lab03-cnn-classifier/lab03-cnn-classifier.ipynb "$subs/lab03-cnn-classifier/solution.ipynb"

for lab in lab02-convolution lab03-cnn-classifier; do
  start=$(date +%s%N)
  "${grader[@]}" grade "$lab" "$subs/$lab" --results "$out/results" --device cuda 2>&1 | tee "$out/$lab.log"
  echo "$lab: whole command $(( ($(date +%s%N) - start) / 1000000 )) ms"
done

python3 - "$out/results" <<'PY'
import json, pathlib, sys
base = pathlib.Path(sys.argv[1])
for path in sorted(base.glob("lab*/*.json")):
    r = json.loads(path.read_text())
    t = r.get("timing", {})
    print(f"{r['lab']:<22} {r['student']:<9} {r['status']:<8} {r['score']}/{r['max_score']} device={r['device']} "
          f"isolation={r['isolation']} runtime={r['runtime_s']} s (kernel start {t.get('start_s')} s, "
          f"cells {t.get('cells_s')} s, tests {t.get('tests_s')} s)")
PY

if [ "${SWEEP:-1}" != 0 ]; then
  python3 -c "from autograder import course, slots; print('GPU plan for lab03:', slots.plan_for_labs([course.load_lab(\
'lab03-cnn-classifier', course.course_root(None)).settings]).describe())"
  python3 autograder/benchmark.py --device cuda --labs lab03-cnn-classifier -k "${SWEEP_K:-16}" \
      --per-gpu ${SWEEP_PER_GPU:-1 2 4 8} --json "$out/sweep.json" 2>&1 | tee "$out/sweep.log"
fi
