"""Optuna's TPESampler, with its defaults and a seed, over the parameters of a sweep file; each
trial is a `pipeline run` of the sweep's pipeline with the trial's values as `--set` overrides
(the objective: the sweep metric from its stages' metrics). Prints the best value, every trial's
value and parameters as JSON.

Usage: optuna_tpe.py PIPELINE_BIN STORE SWEEP_FILE SEED TRIALS
"""
import json
import os
import subprocess
import sys

import optuna
import yaml

binary, store, sweep_file, seed, trials = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sweep = yaml.safe_load(open(sweep_file))
pipeline = os.path.join(os.path.dirname(os.path.abspath(sweep_file)), sweep["pipeline"])
metric = sweep["metric"]["name"]


def objective(trial):
    sets = []
    for path, spec in sweep["parameters"].items():
        if "values" in spec:
            value = trial.suggest_categorical(path, spec["values"])
        elif spec["distribution"] == "log_uniform":
            value = trial.suggest_float(path, spec["min"], spec["max"], log=True)
        elif spec["distribution"] == "uniform":
            value = trial.suggest_float(path, spec["min"], spec["max"])
        else:
            value = trial.suggest_int(path, int(spec["min"]), int(spec["max"]))
        sets += ["--set", f"{path}={json.dumps(value)}"]
    run = subprocess.run([binary, "--json", "run", pipeline, *sets], env={**os.environ, "PIPELINE_STORE": store},
                         capture_output=True, text=True)
    print(run.stderr, file=sys.stderr)
    metrics = {}
    for stage in json.loads(run.stdout)["stages"]:
        metrics.update(stage.get("metrics") or {})
    return metrics.get(metric, float("nan"))


optuna.logging.set_verbosity(optuna.logging.WARNING)
direction = "maximize" if sweep["metric"]["goal"] == "maximize" else "minimize"
study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
study.optimize(objective, n_trials=trials)
done = [t for t in study.trials if t.value is not None]
print(json.dumps({"best": study.best_value, "values": [t.value for t in done], "params": [t.params for t in done],
                  "optuna": optuna.__version__}))
