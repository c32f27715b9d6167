# The two quickstart commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo demo-causal demo-madx test test-slow test-adapterhub lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs only the runtime dependencies; the tests add torch (CPU), peft and the metric
# references (extra `test`).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

# Natural vs balanced (uniform) language sampling on the shipped demo data, then the comparison.
demo: $(STAMP)
	$(BIN)/langtune train configs/demo.yaml --set run.name=demo-natural --set sampling.strategy=natural
	$(BIN)/langtune train configs/demo.yaml --set run.name=demo-balanced --set sampling.strategy=uniform
	$(BIN)/langtune compare runs/demo-natural runs/demo-balanced --split test --out runs/demo-comparison

# The causal-LM demo: LoRA instruction tuning of the shipped tiny Llama (demo/causal), natural vs
# balanced (uniform, counted in tokens) language sampling, then per-language perplexity side by side.
demo-causal: $(STAMP)
	$(BIN)/langtune train configs/demo_causal.yaml --set run.name=demo-causal-natural --set sampling.strategy=natural
	$(BIN)/langtune train configs/demo_causal.yaml --set run.name=demo-causal-balanced --set sampling.strategy=uniform
	$(BIN)/langtune compare runs/demo-causal-natural runs/demo-causal-balanced --split test --out runs/demo-causal-comparison

# MAD-X zero-shot transfer to sw (demo/README.md): masked-LM language adapters for all five
# languages, then a task adapter stacked on them trained on four; against a shared-LoRA run.
demo-madx: $(STAMP)
	$(BIN)/langtune train configs/demo_madx_languages.yaml
	$(BIN)/langtune train configs/demo_madx.yaml
	$(BIN)/langtune train configs/demo_madx.yaml --set run.name=demo-madx-lora --set peft.method=lora
	$(BIN)/langtune compare runs/demo-madx-lora runs/demo-madx --split test --out runs/demo-madx-comparison

# Two workers, each test file on one worker (module fixtures are built once): ~8 min on 2 cores.
test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest tests -n 2 --dist loadfile

# The heavier end-to-end checks (kill -9 resumes, two processes, demo-asset determinism).
test-slow: $(TEST_STAMP)
	$(BIN)/python -m pytest tests -m slow -n 2 --dist loadfile

# AdapterHub interop against the real `adapters` library, both directions (docs/adapters.md). The
# library needs transformers ~=4.57, so it gets its own venv beside ours; not part of `make test`.
ADAPTERHUB_VENV ?= .venv-adapterhub
ADAPTERHUB_STAMP := $(ADAPTERHUB_VENV)/.installed

$(ADAPTERHUB_STAMP):
	$(PYTHON) -m venv $(ADAPTERHUB_VENV)
	$(ADAPTERHUB_VENV)/bin/pip install --quiet torch==2.13.0
	$(ADAPTERHUB_VENV)/bin/pip install --quiet "adapters==1.3.0" numpy safetensors
	touch $(ADAPTERHUB_STAMP)

test-adapterhub: $(TEST_STAMP) $(ADAPTERHUB_STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/check_adapterhub.py --python $(ADAPTERHUB_VENV)/bin/python

lint: $(TEST_STAMP)
	$(BIN)/ruff check langtune_jax tests scripts
	$(BIN)/ruff format --check langtune_jax tests scripts

clean:
	rm -rf runs .pytest_cache
