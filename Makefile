# Two commands for a newcomer: `make demo` and `make test`. Both create/update .venv first.
# On a GPU machine (torch and triton already installed): `make gpu-report`, no venv (see below).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip quiet; setuptools' note on editable installs of a package-dir layout silenced
PIP := PIP_ROOT_USER_ACTION=ignore PYTHONWARNINGS="ignore:Editable installation" \
	$(VPY) -m pip install -q --disable-pip-version-check
# CPU machines run the Triton kernels through Triton's interpreter; a CUDA machine runs them natively.
INTERPRET = $$($(VPY) -c 'import torch; print(0 if torch.cuda.is_available() else 1)')
# pytest worker processes (pytest-xdist; CI's machine has 2 cores); the readers of the GPU compile
# passes share one worker (their xdist_group), so each pass compiles once
TEST_WORKERS ?= 2

.PHONY: all venv test demo lint clean gpu-report gpu-report-dry
all: test

# torch==2.13.0 resolves to the CPU build on these machines (plain `torch` pulls CUDA wheels).
$(STAMP): pyproject.toml Makefile
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[test]"
	# torchao (optional for users; the interop tests need it): the shipped wheel, else PyPI
	$(PIP) --no-deps ../shared/wheels/torchao-0.18.0-*.whl 2>/dev/null || $(PIP) --no-deps "torchao==0.18.0"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m ruff check .
	TRITON_INTERPRET=$(INTERPRET) $(VPY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup tests

# The demo picks its backend itself: the kernels on a GPU; on a CPU the plain-torch backend for
# training (bit-identical fake quantization) plus a short check against the interpreted kernels.
demo: $(STAMP)
	$(VPY) -m triton_qat.demo

lint: $(STAMP)
	$(VPY) -m ruff check . && $(VPY) -m ruff format --check .

# GPU truth in one command, for a short GPU window: correctness, tuning, benchmark, a training
# step (perf/train_step.py) and a report (at most 8 files) in one folder, the summary printed last. Uses the machine's own python (PY)
# with triton_qat installed by `python3 -m pip install --no-deps --no-build-isolation -e .` (the same
# python: a bare `pip` may belong to another one); creates no venv
# and installs nothing. Knobs (environment or make variables): BUDGET_S (total seconds, default
# 480), REPORT_DIR (default perf/results/<gpu>/), e.g. `make gpu-report REPORT_DIR=/out`.
gpu-report:
	$(PY) perf/gpu_report.py

# The same command path on a CPU: Triton interpreter, tiny shapes, a few seconds per phase
# (tests/test_gpu_report.py runs it in `make test`); writes perf/results/quick/gpu-report/.
gpu-report-dry: $(STAMP)
	TRITON_INTERPRET=1 $(VPY) perf/gpu_report.py --dry-run

clean:
	rm -rf $(VENV) *.egg-info
