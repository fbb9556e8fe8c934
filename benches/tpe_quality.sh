#!/usr/bin/env bash
# Search quality of `method: tpe` against Optuna's TPESampler and `method: random`, side by side in
# one run: the same space (benches/reference/tpe-space.yaml: the sample CNN's learning rate, clipping
# and filters), the same budget (TRIALS) and the same pipeline and data. For each seed: our tpe sweep
# and our random sweep (`pipeline run`, PARALLEL trials at a time; the trials do not depend on it),
# then Optuna's TPESampler(seed=SEED) with its defaults, one trial at a time, each trial a
# `pipeline run pipelines/imdb-sample.yaml --set ...` in a store of its own. Prints each seed's best
# eval_accuracy per method and the medians; JSON lines go to $OUT/results.jsonl.
# Usage (see `make bench-tpe`): benches/tpe_quality.sh [SEED...]   (default: 0 1 2 3 4)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PIPELINE:?the pipeline binary}" "${PYTHON:?a Python with optuna}"
TRIALS=${TRIALS:-24}
PARALLEL=${PARALLEL:-2}
OUT=${OUT:-artifacts/bench/tpe}
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(0 1 2 3 4); fi
for seed in "${seeds[@]}"; do
    for method in tpe random; do
        sweep="$OUT/$method-$seed.yaml"
        sed -e "s/^method: .*/method: $method/" -e "s/^seed: .*/seed: $seed/" -e "s/^trials: .*/trials: $TRIALS/" \
            -e "s/^parallel: .*/parallel: $PARALLEL/" -e "s|^pipeline: .*|pipeline: $PWD/pipelines/imdb-sample.yaml|" \
            benches/reference/tpe-space.yaml > "$sweep"
        [ "$method" = tpe ] || sed -i '/^tpe:/d' "$sweep"
        start=$(date +%s.%N)
        PIPELINE_STORE="$OUT/store" "$PIPELINE" --json run "$sweep" > "$OUT/$method-$seed.json" 2> "$OUT/$method-$seed.log"
        echo "seed $seed: $method $(python3 -c "import json,sys; r=json.load(open('$OUT/$method-$seed.json')); print(r['trials'][0]['metric'])") in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" >&2
    done
    start=$(date +%s.%N)
    "$PYTHON" benches/reference/optuna_tpe.py "$PIPELINE" "$OUT/store" benches/reference/tpe-space.yaml "$seed" "$TRIALS" \
        > "$OUT/optuna-$seed.json" 2> "$OUT/optuna-$seed.log"
    echo "seed $seed: optuna $(python3 -c "import json; print(json.load(open('$OUT/optuna-$seed.json'))['best'])") in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" >&2
    python3 - "$OUT" "$seed" <<'PY' >> "$OUT/results.jsonl"
import json, sys
out, seed = sys.argv[1], int(sys.argv[2])
row = {"seed": seed}
for method in ("tpe", "random"):
    run = json.load(open(f"{out}/{method}-{seed}.json"))
    values = [t["metric"] for t in run["trials"] if t["metric"] is not None]
    row[method] = max(values)
    row[f"{method}_trials"] = len(run["trials"])
optuna = json.load(open(f"{out}/optuna-{seed}.json"))
row["optuna"] = optuna["best"]
row["optuna_trials"] = len(optuna["values"])
print(json.dumps(row))
PY
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'seed':>4} {'tpe':>8} {'optuna':>8} {'random':>8}")
for r in rows:
    print(f"{r['seed']:>4} {r['tpe']:>8.4f} {r['optuna']:>8.4f} {r['random']:>8.4f}")
med = {m: statistics.median(r[m] for r in rows) for m in ("tpe", "optuna", "random")}
print(f"{'med':>4} {med['tpe']:>8.4f} {med['optuna']:>8.4f} {med['random']:>8.4f}  (best eval_accuracy of {rows[0]['tpe_trials']} trials, {len(rows)} seeds)")
PY
