# `make run` builds the CLI and runs the main job; `make test` runs every check CI runs.
# Both use the dev profile (dependencies optimised, see Cargo.toml), so they share one build.

CARGO ?= cargo

.PHONY: run test lint bench

run:
	$(CARGO) run --quiet -- run pipelines/imdb-sample.yaml

test:
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench noop_run
