#!/usr/bin/env bash
# What early stopping saves: a 27-trial `method: random` sweep over benches/reference/tpe-space.yaml
# (the CNN's learning rate, clipping and filters) run with `early_terminate: {type: asha,
# grace_steps: GRACE, reduction_factor: 3}` and without, side by side, each in a fresh store,
# PARALLEL trials at a time. DATA=sample (default): pipelines/imdb-sample.yaml (3 epochs, 675
# steps, 200 validation reviews, an evaluation every 75 steps, GRACE 75: rungs at 75 and 225);
# DATA=imdb: pipelines/imdb-cnn.yaml (full IMDB train, 2,500 steps, 2,000 validation reviews),
# evaluated every 250 steps, GRACE 250 (rungs at 250, 750 and 2,250).
# For each seed: the training steps of all trials (a pruned trial's up to its rung), the wall
# time and the best eval_accuracy of each; JSON lines go to $OUT/results.jsonl.
# VARIANTS="asha" reruns only the early-stopping sweeps, next to the full ones already in $OUT.
# Usage (see `make bench-asha`): benches/asha_savings.sh [SEED...]   (default: 0 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PIPELINE:?the pipeline binary}"
TRIALS=${TRIALS:-27}
PARALLEL=${PARALLEL:-2}
DATA=${DATA:-sample}
case "$DATA" in
    sample) pipeline=pipelines/imdb-sample.yaml grace=75 fixed= ;;
    imdb) pipeline=pipelines/imdb-cnn.yaml grace=250 fixed='  stages.train.eval_steps: {values: [250]}' ;;
    *) echo "DATA is sample or imdb, not $DATA" >&2; exit 2 ;;
esac
OUT=${OUT:-artifacts/bench/asha-$DATA}
mkdir -p "$OUT"
VARIANTS=${VARIANTS:-full asha}
[ "$VARIANTS" = asha ] || rm -f "$OUT/results.jsonl"
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(0 1 2); fi
for seed in "${seeds[@]}"; do
    for variant in $VARIANTS; do
        sweep="$OUT/$variant-$seed.yaml"
        sed -e "s/^method: .*/method: random/" -e "s/^seed: .*/seed: $seed/" -e "s/^trials: .*/trials: $TRIALS/" \
            -e "s/^parallel: .*/parallel: $PARALLEL/" -e "s|^pipeline: .*|pipeline: $PWD/$pipeline|" \
            -e '/^tpe:/d' benches/reference/tpe-space.yaml > "$sweep"
        [ -z "$fixed" ] || sed -i "/^parameters:/a\\$fixed" "$sweep"
        [ "$variant" = full ] || echo "early_terminate: {type: asha, grace_steps: $grace, reduction_factor: 3}" >> "$sweep"
        store="$OUT/store-$variant-$seed"
        rm -rf "$store"
        start=$(date +%s.%N)
        PIPELINE_STORE="$store" "$PIPELINE" --json run "$sweep" > "$OUT/$variant-$seed.json" 2> "$OUT/$variant-$seed.log"
        end=$(date +%s.%N)
        python3 - "$OUT/$variant-$seed.json" "$store" "$seed" "$variant" "$(python3 -c "print($end - $start)")" <<'PY' >> "$OUT/results.jsonl"
import csv, json, sys
result, store, seed, variant, wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
run = json.load(open(result))
trained = {s["label"].split("/")[0]: s for s in run["stages"] if s["label"].endswith("/train")}
steps = 0
for trial in run["trials"]:
    if trial["status"] == "pruned":
        steps += trial["pruned_at_step"]
    else:
        stage = trained[trial["trial"]]
        rows = list(csv.DictReader(open(f"{store}/train/{stage['key']}/out/history.csv")))
        steps += int(rows[-1]["step"])
values = [t["metric"] for t in run["trials"] if t["metric"] is not None]
print(json.dumps({"seed": seed, "variant": variant, "trials": len(run["trials"]), "steps": steps,
                  "pruned": sum(t["status"] == "pruned" for t in run["trials"]),
                  "wall": round(wall, 1), "best": max(values)}))
PY
        tail -1 "$OUT/results.jsonl" >&2
    done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["seed"], r["variant"]): r for r in rows}
seeds = sorted({r["seed"] for r in rows})
print(f"{'seed':>4} {'steps full':>10} {'steps asha':>10} {'ratio':>6} {'wall full':>9} {'wall asha':>9} {'best full':>9} {'best asha':>9} {'pruned':>6}")
ratios = []
for s in seeds:
    f, a = by[(s, "full")], by[(s, "asha")]
    ratios.append(a["steps"] / f["steps"])
    print(f"{s:>4} {f['steps']:>10} {a['steps']:>10} {ratios[-1]:>6.3f} {f['wall']:>8.1f}s {a['wall']:>8.1f}s {f['best']:>9.4f} {a['best']:>9.4f} {a['pruned']:>6}")
print(f"median steps ratio {statistics.median(ratios):.3f}")
PY
