#!/usr/bin/env bash
# The GPU checks of issue 19, for a machine with a GPU, PyTorch and no Rust: run from the
# repository root with the bundle `make gpu-bundle` builds (a `pipeline` linked against pip's
# torch 2.11.0, which runs on that machine's own libtorch):
#
#   benches/gpu/check.sh [BUNDLE]          # BUNDLE defaults to gpu-bundle
#
# DEVICE (default cuda:0; `libtorch` runs the same checks on the CPU), OUT (default
# gpu-results), PYTHON (default python3, the interpreter whose torch provides libtorch).
# It writes OUT/summary.txt and one JSON file per run, and exits 1 when a check fails:
#   1. parity: the libtorch test's four models (tests/train_stages.rs) on DEVICE against flex
#      on the CPU, training loss and test loss within 1e-3;
#   2. a 2-trial sweep (two learning rates of the sample pipeline) on DEVICE;
#   3. timings: the sample pipeline's train stage on DEVICE and on flex.
set -u
repo=$(pwd)
bundle=$(cd "${1:-gpu-bundle}" && pwd)
device=${DEVICE:-cuda:0}
out=${OUT:-$repo/gpu-results}
python=${PYTHON:-python3}
rm -rf "$out/store"
mkdir -p "$out/pipelines"
ln -sfn "$repo/data" "$out/data"
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
    echo "no torch in $python" >&2
    exit 1
}
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PIPELINE_STORE="$out/store"
unset MLFLOW_TRACKING_URI
failed=0
say() { echo "$*" | tee -a "$out/summary.txt"; }

say "pipeline: $("$bundle/pipeline" --version), device $device, torch $("$python" -c 'import torch; print(torch.__version__, torch.cuda.is_available())'), $(date -u +%FT%TZ)"

# The sample pipeline with a model of its own; with a step count, 20 steps logged every 5.
variant() { # name, model, [steps]
    local lines=(-e "s|^    model: .*|    model: $2|")
    [[ -n ${3:-} ]] && lines+=(-e "s|^    epochs: 3|    max_steps: $3|" -e "s|^    eval_steps: 75|    eval_steps: 10|"
        -e "s|^    logging_steps: 25|    logging_steps: 5|")
    sed "${lines[@]}" "$repo/pipelines/imdb-sample.yaml" >"$out/pipelines/$1.yaml"
    echo "$out/pipelines/$1.yaml"
}

# Runs a pipeline on a device; prints the JSON result's file.
run() { # file, device, tag
    local json="$out/$3.json"
    "$bundle/pipeline" --json run "$1" --set "device=$2" >"$json" 2>"$out/$3.log" || {
        say "FAILED: $3 (see $3.log)"
        failed=1
    }
    echo "$json"
}

# Training losses of history.csv and the test loss, from a run's JSON result.
losses() {
    "$python" - "$1" "$PIPELINE_STORE" <<'EOF'
import csv, json, os, sys
result = json.load(open(sys.argv[1]))
stages = {s["name"]: s for s in result["stages"]}
train = stages["train"]
out = os.path.join(sys.argv[2], train["kind"], train["key"], "out")
rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
values = [float(r["loss"]) for r in rows if r.get("loss")]
values.append(float(stages["evaluate"]["metrics"]["test_loss"]))
print(json.dumps({"losses": values, "train_seconds": train["seconds"]}))
EOF
}

# 1. Parity.
models=(
    "{type: cnn, embedding_dim: 16, num_filters: 8}"
    "{type: rnn, hidden_size: 16, bidirectional: true, pooling: last}"
    "{type: lstm, hidden_size: 16, num_layers: 2, dropout: 0.2, pooling: mean}"
    "{type: gru, hidden_size: 16, pooling: attention}"
)
for i in "${!models[@]}"; do
    file=$(variant "parity-$i" "${models[$i]}" 20)
    flex=$(losses "$(run "$file" cpu "parity-$i-cpu")")
    gpu=$(losses "$(run "$file" "$device" "parity-$i-gpu")")
    verdict=$("$python" -c '
import json, sys
a, b = (json.loads(s)["losses"] for s in sys.argv[1:3])
ok = len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(abs(x), 1.0) for x, y in zip(a, b))
print("ok" if ok else "DIFFERENT", "flex", [round(x, 5) for x in a], "device", [round(y, 5) for y in b])
' "$flex" "$gpu") || verdict="DIFFERENT (unreadable results)"
    say "parity ${models[$i]}: $verdict"
    [[ $verdict == ok* ]] || failed=1
done

# 2. A 2-trial sweep on the device.
cat >"$out/pipelines/sweep.yaml" <<EOF
pipeline: imdb-sample.yaml
method: grid
metric: {name: eval_accuracy, goal: maximize}
parameters:
  stages.train.optimizer.lr: {values: [1.0e-3, 3.0e-3]}
parallel: 1
devices: [$device]
EOF
cp "$repo/pipelines/imdb-sample.yaml" "$out/pipelines/imdb-sample.yaml"
start=$(date +%s.%N)
if "$bundle/pipeline" --json run "$out/pipelines/sweep.yaml" >"$out/sweep.json" 2>"$out/sweep.log"; then
    say "sweep: 2 trials on $device in $("$python" -c "import sys; print(round($(date +%s.%N) - $start, 1))") s"
else
    say "FAILED: the sweep (see sweep.log)"
    failed=1
fi

# 3. Timings of the sample pipeline's train stage (3 epochs, 675 steps).
file=$(variant timing "{type: cnn, embedding_dim: 64, filter_size: 3, num_filters: 10}")
export PIPELINE_STORE="$out/store-timing" # nothing cached from the checks above
rm -rf "$PIPELINE_STORE"
for d in cpu "$device"; do
    seconds=$(losses "$(run "$file" "$d" "timing-${d//:/}")" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["train_seconds"])')
    say "train stage on $d: $seconds s"
done

[[ $failed == 0 ]] && say "all checks passed" || say "some checks failed"
exit $failed
