#!/usr/bin/env bash
# Cross-check between the real CICIoMT2024 subset and the built-in lab dataset, on the classes both hold:
#   1. a model trained on the real subset scores every lab row of those classes;
#   2. a model trained on the lab rows of those classes scores every real row.
# Usage: benchmarks/cross_domain.sh REAL_RELEASE_ROOT OUT_DIR [TASK [REAL_MODEL_DIR]]
# REAL_MODEL_DIR reuses a bundle trained on the real subset (for example by 'hclr-ids run') instead of training one.
set -euo pipefail
real=$1
out=$2
task=${3:-multiclass}
real_model=${4:-}
hclr=${HCLR_IDS:-hclr-ids}
builtin=$(python -c 'from hclr_ids.datasets import builtin_dataset_path; print(builtin_dataset_path())')

# The lab rows of the classes that the real subset holds, in the release layout.
lab="$out/lab-shared-classes/WiFI_and_MQTT/attacks/csv"
mkdir -p "$lab/train" "$lab/test"
for path in "$real"/WiFI_and_MQTT/attacks/csv/*/*.pcap.csv; do
    class=$(basename "$path" | sed -E 's/[0-9]*_(train|test)\.pcap\.csv$//')
    for side in train test; do
        src="$builtin/WiFI_and_MQTT/attacks/csv/$side/${class}_$side.pcap.csv"
        [ -f "$src" ] && cp "$src" "$lab/$side/"
    done
done
echo "lab classes: $(ls "$lab/train" | sed -E 's/_train\.pcap\.csv//' | tr '\n' ' ')"

if [ -z "$real_model" ]; then
    real_model="$out/real-model"
    "$hclr" -q run --data "$real" --task "$task" --split contiguous --out "$real_model" --no-baselines
fi
"$hclr" -q evaluate --model "$real_model" --data "$out/lab-shared-classes" --part all --out "$out/real-on-lab"
"$hclr" -q run --data "$out/lab-shared-classes" --task "$task" --split contiguous --out "$out/lab-model" --no-baselines
"$hclr" -q evaluate --model "$out/lab-model" --data "$real" --part all --out "$out/lab-on-real"

for name in lab-model real-on-lab lab-on-real; do
    python - "$out/$name/metrics.json" "$name" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<12} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  rows {m['n_samples']}")
PY
done
