# Two commands for a newcomer: `make demo` and `make test`. Both create/update .venv first.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines run the Triton kernels through Triton's interpreter; a CUDA machine runs them natively.
INTERPRET = $$($(VPY) -c 'import torch; print(0 if torch.cuda.is_available() else 1)')

.PHONY: all venv test demo lint clean
all: test

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch==2.13.0 resolves to the CPU build on these machines (plain `torch` pulls CUDA wheels).
	$(VPY) -m pip install -q "torch==2.13.0"
	$(VPY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m ruff check .
	TRITON_INTERPRET=$(INTERPRET) $(VPY) -m pytest -q -p no:cacheprovider tests

demo: $(STAMP)
	TRITON_INTERPRET=$(INTERPRET) $(VPY) -m triton_qat.demo

lint: $(STAMP)
	$(VPY) -m ruff check . && $(VPY) -m ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info
