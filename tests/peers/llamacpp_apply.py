"""Run by .venv-llamacpp/bin/python: last-position logits of token-id prompts in llama.cpp,
without and with a control-vector file applied through llama-cpp-python's low-level API.

argv: model.gguf vector.gguf prompts.json out.npz. The file is read with llama.cpp's own
gguf reader (libggml-base: gguf_init_from_file) and laid out as common.cpp's
common_control_vector_load_one does (direction.N at offset (N-1)*n_embd), then applied
with llama_set_adapter_cvec (llama_apply_adapter_cvec, llama_control_vector_apply in
older releases) over layers 1..n_layer-1, as llama.cpp's --control-vector does."""
import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import llama_cpp


class _Params(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def load_cvec(path: str) -> tuple[np.ndarray, int]:
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _Params]
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.ggml_get_tensor.restype = ctypes.c_void_p
    lib.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_n_dims.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    ctx = ctypes.c_void_p()
    gguf = lib.gguf_init_from_file(path.encode(), _Params(False, ctypes.pointer(ctx)))
    assert gguf, f"llama.cpp could not read {path}"
    data, n_embd = np.zeros(0, np.float32), -1
    for i in range(lib.gguf_get_n_tensors(gguf)):
        name = lib.gguf_get_tensor_name(gguf, i)
        layer_idx = int(name.decode().split(".", 1)[1])
        assert name.startswith(b"direction.") and layer_idx > 0, name
        tensor = lib.ggml_get_tensor(ctx, name)
        assert lib.ggml_n_dims(tensor) == 1
        n_embd = lib.ggml_nelements(tensor)
        values = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(n_embd,)).copy()
        if data.size < n_embd * layer_idx:
            data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, np.float32)])
        data[n_embd * (layer_idx - 1):n_embd * layer_idx] += values  # layer 1 at [0]
    return data, n_embd


def main() -> None:
    model_path, vector_path, prompts_path, out = sys.argv[1:5]
    prompts = json.loads(Path(prompts_path).read_text())
    llm = llama_cpp.Llama(model_path, n_ctx=256, n_threads=2, verbose=False)
    apply = getattr(llama_cpp, "llama_set_adapter_cvec", None) or getattr(llama_cpp, "llama_apply_adapter_cvec", None) \
        or llama_cpp.llama_control_vector_apply
    data, n_embd = load_cvec(vector_path)
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    result = {}
    for condition in ("base", "steered"):
        buffer = (ctypes.c_float * data.size)(*data) if condition == "steered" else None
        rc = apply(llm.ctx, buffer, data.size if buffer is not None else 0, n_embd, 1, n_layer - 1)
        assert rc == 0, f"{apply.__name__} returned {rc}"
        rows = []
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # the last position of the batch just decoded
            rows.append(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).astype(np.float64))
        result[condition] = np.stack(rows)
    np.savez(out, n_layer=n_layer, n_embd=n_embd, **result)


if __name__ == "__main__":
    main()
