#!/usr/bin/env bash
# The whole lnpt job on ELPV solar cells (docs/RESULTS.md, section "ELPV"):
#   split (labeled cloud / unlabeled edge / held-out test) -> teacher trained with labels in the cloud
#   -> student pruned with the LNPT score on unlabeled edge images -> trained label-free through
#   `lnpt serve` -> exported to ONNX -> evaluated on the held-out test set; plus the same pruned
#   student trained *supervised* on the edge set's labels, for comparison.
# ELPV is CC BY-NC-SA 4.0: `lnpt data prepare elpv` installs it (pip --no-deps); never commit it.
# Usage: docs/recipes/elpv.sh [OUT]   (environment variables below change the budget)
set -euo pipefail
OUT=${1:-elpv-run}
LNPT=${LNPT:-lnpt}
PYTHON=${PYTHON:-python}
SIZE=${SIZE:-96}                       # input side (ELPV images are 300 x 300, grey)
TEACHER=${TEACHER:-torchvision:resnet18}
STUDENT=${STUDENT:-torchvision:mobilenet_v3_small}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-15}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-10}
SPARSITY=${SPARSITY:-0.5}
PORT=${PORT:-50917}
THREADS=${THREADS:-2}
COMMON=(--set data.channels=1 --set "data.size=$SIZE" --set data.workers=2)
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS

$LNPT data prepare elpv --out "$OUT/data" --seed 0 --format json > "$OUT/split.json"

# 1. cloud: the teacher, with labels (validation: 15% of the cloud set, stratified)
$LNPT teacher train --model "$TEACHER" --data "$OUT/data/cloud" --val-fraction 0.15 --epochs "$TEACHER_EPOCHS" \
  --batch-size 64 --lr "${TEACHER_LR:-0.02}" --out "$OUT/teacher.pt" --device cpu "${COMMON[@]}" --format json > "$OUT/teacher.json"
$LNPT teacher eval --checkpoint "$OUT/teacher.pt" --data "$OUT/data/test" --format json > "$OUT/teacher-test.json"

# 2. the guidance server
$LNPT serve --checkpoint "$OUT/teacher.pt" --insecure --port "$PORT" --metrics-port -1 > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do grep -q "serving" "$OUT/serve.log" 2>/dev/null && break; sleep 1; done

# 3. edge: prune with the LNPT score on unlabeled images, train label-free, export, evaluate
$LNPT prune --model "$STUDENT" --score lnpt --sparsity "$SPARSITY" --data "$OUT/data/edge" \
  --teacher "127.0.0.1:$PORT" --insecure --out "$OUT/student.pt" --overwrite "${COMMON[@]}" --format json > "$OUT/prune.json"
$LNPT train --student "$OUT/student.pt" --data "$OUT/data/edge" --teacher "127.0.0.1:$PORT" --insecure \
  --epochs "$STUDENT_EPOCHS" --threads "$THREADS" --out "$OUT/student-trained.pt" --no-progress "${COMMON[@]}" \
  --format json > "$OUT/train.json"
$LNPT eval --student "$OUT/student-trained.pt" --data "$OUT/data/test" --teacher "127.0.0.1:$PORT" --insecure \
  --format json > "$OUT/eval.json"
$LNPT export --student "$OUT/student-trained.pt" --out "$OUT/student.onnx" --samples "$OUT/data/edge" --overwrite \
  --format json > "$OUT/export.json"

# 4. comparison: the same pruned student trained with the edge set's labels (supervised), same
#    optimizer, epochs and batch size as step 3 (lnpt.lab.supervised.train_supervised, which
#    `lnpt demo --dataset elpv` uses too); and the ONNX latency (batch 1, one thread).
$PYTHON - "$OUT" "$STUDENT_EPOCHS" <<'PY'
import json, sys
from pathlib import Path

from lnpt.edge import Student
from lnpt.edge.onnx.latency import onnx_latency
from lnpt.lab.supervised import train_supervised

out, epochs = Path(sys.argv[1]), int(sys.argv[2])
supervised = train_supervised(out / "student.pt", out / "data" / "edge_labels.csv", out / "data" / "test", epochs=epochs)
shape = Student.load(out / "student-trained.pt").input_spec.shape
latency = onnx_latency(out / "student.onnx", shape)
result = {"supervised_student_test_accuracy": supervised["accuracy"],
          "test_majority_class_share": supervised["majority_class_share"], "test_samples": supervised["test_samples"],
          "onnx_latency_ms_batch1_1thread_median": latency["median_ms"], "onnx_bytes": (out / "student.onnx").stat().st_size}
(out / "supervised.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
PY
