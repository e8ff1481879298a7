# Two commands do everything on a fresh machine: `make train` and `make test`.
# Both start with `make setup`, which builds .venv/ (reused when present) from pinned requirements.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Keep the venv's tools (ninja for DeepSpeed's JIT ops, deepspeed's launcher) first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed's JIT-built CPU ops (a shared-memory comm op) are cached here, built once.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/neox-trainer/torch_extensions
REQS := requirements/requirements.txt requirements/requirements-dev.txt \
        requirements/requirements-tensorboard.txt requirements/requirements-wandb.txt \
        requirements/requirements-eval.txt requirements/requirements-sentencepiece.txt \
        requirements/requirements-hf.txt

.PHONY: setup data train test lint bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(REQS) requirements/constraints.txt requirements/requirements-mup.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQS))
	# mup declares torchvision, which breaks beside the CPU torch: its imports need only torch.
	$(PY) -m pip install --quiet --no-deps -r requirements/requirements-mup.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# jemalloc for the workers where apt-get can fetch it (else they keep glibc's malloc).
	$(PY) tools/fetch_jemalloc.py
	touch $@

data: setup
	$(PY) tools/corpora.py shakespeare -d data

train: data
	$(PY) ./deepy.py train.py configs/cpu_small.yml configs/local_setup.yml

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) tools/benchmark.py

docs: setup
	$(PY) tools/gen_docs.py

clean:
	rm -rf $(VENV) checkpoints logs tensorboard
