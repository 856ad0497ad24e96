# Two commands on a fresh machine: `make test` and `make demo`. Both set up .venv first (idempotent).
PY := .venv/bin/python
RECIPE ?= recipes/shapes_grpo.yaml
RUN_DIR ?= runs/demo

.PHONY: setup test test-fast demo clean-demo

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest

# The inner loop: the suite without the tests marked `slow` (learning runs, torchrun/gloo, Ray). `make test` stays
# the full CI command.
test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup
	rm -rf $(RUN_DIR)
	.venv/bin/nativerl train $(RECIPE) --run-dir $(RUN_DIR)

clean-demo:
	rm -rf $(RUN_DIR)
