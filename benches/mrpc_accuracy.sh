#!/usr/bin/env bash
# Accuracy of pipelines/mrpc-bert.yaml against the same workflow in Hugging Face's Trainer
# (benches/reference/mrpc_trainer.py), side by side: for each seed, ours and the reference run
# at the same time with THREADS threads each. Prints per-epoch validation accuracy and F1 of
# both and the medians of the last epoch; JSON lines go to $OUT/results.jsonl.
# Usage (see `make bench-mrpc`): benches/mrpc_accuracy.sh [SEED...]   (default: 42 43 44)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PIPELINE:?the pipeline binary}" "${PYTHON:?a Python with torch, transformers, accelerate, pyarrow}"
THREADS=${THREADS:-1}
OUT=${OUT:-artifacts/bench/mrpc}
mkdir -p "$OUT"
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(42 43 44); fi
for seed in "${seeds[@]}"; do
    echo "seed $seed: ours and the Trainer, $THREADS thread(s) each" >&2
    start=$(date +%s)
    PIPELINE_STORE="$OUT/store" "$PIPELINE" --json run pipelines/mrpc-bert.yaml --set "seed=$seed" \
        --set "stages.train.threads=$THREADS" > "$OUT/ours-$seed.json" 2> "$OUT/ours-$seed.log" &
    ours=$!
    "$PYTHON" benches/reference/mrpc_trainer.py data/checkpoints/all-MiniLM-L6-v2 ../shared/data/glue-mrpc \
        "$seed" "$THREADS" > "$OUT/pytorch-$seed.json" 2> "$OUT/pytorch-$seed.log"
    wait "$ours"
    python3 - "$OUT" "$seed" "$THREADS" "$(( $(date +%s) - start ))" <<'PY' >> "$OUT/results.jsonl"
import csv, json, sys
out, seed, threads, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
run = json.load(open(f"{out}/ours-{seed}.json"))
train = next(s for s in run["stages"] if s["name"] == "train")
history = f"{out}/store/train/{train['key']}/out/history.csv"
epochs = [{"epoch": float(r["epoch"]), "eval_accuracy": float(r["eval_accuracy"]), "eval_f1": float(r["eval_f1"]),
           "eval_loss": float(r["eval_loss"])} for r in csv.DictReader(open(history)) if r.get("eval_accuracy")]
print(json.dumps({"side": "ours", "seed": seed, "threads": threads, "steps": train["metrics"]["steps"],
                  "seconds": train["seconds"], "epochs": epochs}))
print(open(f"{out}/pytorch-{seed}.json").read().strip().splitlines()[-1])
PY
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'side':8} {'seed':>5} {'epoch':>5} {'accuracy':>9} {'F1':>7} {'eval loss':>9} {'train s':>8}")
for r in rows:
    for e in r["epochs"]:
        print(f"{r['side']:8} {r['seed']:>5} {e['epoch']:>5.1f} {e['eval_accuracy']:>9.4f} {e['eval_f1']:>7.4f} "
              f"{e['eval_loss']:>9.4f} {r['seconds']:>8.0f}")
for side in ("ours", "pytorch"):
    last = [r["epochs"][-1] for r in rows if r["side"] == side and r["epochs"]]
    if last:
        print(f"median of the last epoch, {side}: accuracy {statistics.median(e['eval_accuracy'] for e in last):.4f}, "
              f"F1 {statistics.median(e['eval_f1'] for e in last):.4f} over {len(last)} seed(s)")
PY
