# Peer environments for the interoperability tests (issue 26); `make peers` builds them.
# Each peer whose requirements clash with interlayer's test environment gets a venv of its
# own; the tests drive it as a subprocess (tests/peers/).
#   .venv-llamacpp  llama-cpp-python (compiles llama.cpp, CPU only): control vectors applied by llama.cpp
#   .venv-repeng    repeng 0.4.0 (needs numpy<2) with the CPU torch: its ControlVector and GGUF files
LLAMACPP_VENV ?= .venv-llamacpp
REPENG_VENV ?= .venv-repeng
LLAMACPP ?= llama-cpp-python==0.3.36
# Only the llama library is needed (no tests, examples, tools, server, multimodal library or
# HTTPS). Not GGML_NATIVE: -march=native turns on AMX where the CPU reports it, and ggml's
# AMX matmul crashes (SIGSEGV in ggml_backend_amx_mul_mat) where the kernel does not grant
# AMX tile state, as on the project's machines; AVX2 is kept. pip's wheel cache keeps the
# compiled wheel on the machine that built it, so a later `make peers` there does not compile
# (the cache is keyed by the sdist, not by CMAKE_ARGS: pip cache remove llama_cpp_python
# after changing them).
LLAMACPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF \
	-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
REPENG ?= repeng==0.4.0
REPENG_DEPS ?= "numpy<2" "gguf>=0.10" "transformers>=4.40,<5" safetensors

.PHONY: peers peers-llamacpp peers-repeng
peers: peers-llamacpp peers-repeng
peers-llamacpp: $(LLAMACPP_VENV)/.installed
peers-repeng: $(REPENG_VENV)/.installed

$(LLAMACPP_VENV)/.installed: mk/peers.mk
	test -x $(LLAMACPP_VENV)/bin/python || python3 -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(LLAMACPP_VENV)/bin/python -m pip install -q "$(LLAMACPP)"
	$(LLAMACPP_VENV)/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
	touch $@

$(REPENG_VENV)/.installed: mk/peers.mk
	$(call install_torch,$(REPENG_VENV))
	$(REPENG_VENV)/bin/python -m pip install -q -c $(REPENG_VENV)/torch-constraint.txt "$(REPENG)" $(REPENG_DEPS)
	$(REPENG_VENV)/bin/python -c "import repeng, numpy; print('repeng ok, numpy', numpy.__version__)"
	touch $@
