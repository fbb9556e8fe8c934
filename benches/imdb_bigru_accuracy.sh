#!/usr/bin/env bash
# Accuracy of pipelines/imdb-bert-bigru.yaml against the same workflow in PyTorch and
# `transformers` (benches/reference/imdb_bigru.py), side by side on the same reviews: ours runs
# with `shuffle.limit=ROWS` (a seeded sample of ROWS reviews of each IMDB split; `split` then
# moves 30% of the train sample to validation), and the reference reads the rows our `split`
# stage wrote. Each side gets THREADS threads. Prints both sides' per-epoch validation numbers
# and test accuracy; JSON lines go to $OUT/results.jsonl.
# Usage (see `make bench-imdb-bigru`): benches/imdb_bigru_accuracy.sh [SEED...]   (default: 1234)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PIPELINE:?the pipeline binary}" "${PYTHON:?a Python with torch, transformers, pyarrow}"
THREADS=${THREADS:-1}
ROWS=${ROWS:-7500}
OUT=${OUT:-artifacts/bench/imdb-bigru}
STORE="$OUT/store"
mkdir -p "$OUT"
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(1234); fi
for seed in "${seeds[@]}"; do
    sets=(--set "seed=$seed" --set "stages.shuffle.limit=$ROWS" --set "stages.encode.threads=$THREADS"
          --set "stages.train.threads=$THREADS")
    echo "seed $seed: ours and PyTorch on $ROWS reviews per split, $THREADS thread(s) each" >&2
    split=$(PIPELINE_STORE="$STORE" "$PIPELINE" --json plan pipelines/imdb-bert-bigru.yaml "${sets[@]}" |
        python3 -c 'import json, sys; print(next(s["key"] for s in json.load(sys.stdin)["stages"] if s["name"] == "split"))')
    PIPELINE_STORE="$STORE" "$PIPELINE" --json run pipelines/imdb-bert-bigru.yaml "${sets[@]}" \
        > "$OUT/ours-$seed.json" 2> "$OUT/ours-$seed.log" &
    ours=$!
    until [ -e "$STORE/split/$split/out/table.json" ]; do
        kill -0 "$ours" 2>/dev/null || { cat "$OUT/ours-$seed.log" >&2; exit 1; }
        sleep 2
    done
    "$PYTHON" benches/reference/imdb_bigru.py data/checkpoints/all-MiniLM-L6-v2 "$STORE/split/$split/out" \
        "$seed" "$THREADS" > "$OUT/pytorch-$seed.json" 2> "$OUT/pytorch-$seed.log"
    wait "$ours"
    python3 - "$OUT" "$STORE" "$seed" "$THREADS" <<'PY' >> "$OUT/results.jsonl"
import csv, json, sys
out, store, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stages = {s["name"]: s for s in json.load(open(f"{out}/ours-{seed}.json"))["stages"]}
train, evaluate = stages["train"], stages["evaluate"]
history = [r for r in csv.DictReader(open(f"{store}/train/{train['key']}/out/history.csv")) if r.get("eval_loss")]
epochs = [{"epoch": float(r["epoch"]), "eval_loss": float(r["eval_loss"]), "eval_accuracy": float(r.get("eval_accuracy") or "nan")}
          for r in history]
rows = {k[len("rows."):]: int(v) for k, v in stages["split"]["metrics"].items() if k.count(".") == 1}
print(json.dumps({"side": "ours", "seed": seed, "threads": threads, "rows": rows, "epochs": epochs,
                  "validation_accuracy": evaluate["metrics"]["validation_accuracy"],
                  "test_accuracy": evaluate["metrics"]["test_accuracy"],
                  "encode_seconds": stages["encode"]["seconds"], "train_seconds": train["seconds"]}))
print(open(f"{out}/pytorch-{seed}.json").read().strip().splitlines()[-1])
PY
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'side':8} {'seed':>5} {'epoch':>5} {'eval loss':>9} {'val acc':>8}")
for r in rows:
    for e in r["epochs"]:
        print(f"{r['side']:8} {r['seed']:>5} {e['epoch']:>5.1f} {e['eval_loss']:>9.4f} {e['eval_accuracy']:>8.4f}")
for r in rows:
    print(f"{r['side']:8} seed {r['seed']}: rows {r['rows']}, kept validation accuracy {r['validation_accuracy']:.4f}, "
          f"test accuracy {r['test_accuracy']:.4f}, encode {r['encode_seconds']:.0f} s, train {r['train_seconds']:.0f} s")
PY
