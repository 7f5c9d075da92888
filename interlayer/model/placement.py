"""Where a checkpoint's weights go when it loads: the dtype ``"auto"`` picks, device maps
(accelerate's placement of blocks on GPUs, the CPU and disk), memory limits and
quantisation, all read and checked before any weight is, and the device a model placed
by accelerate takes its inputs on.

The options of :func:`interlayer.load_model` (and ``--device-map``, ``--max-memory``,
``--offload-folder``, ``--revision``, ``--quantization`` on the command line), all passed
on to transformers' ``from_pretrained``:

* ``device_map``: ``"auto"`` (or ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``), or a
  dict ``{module: device}`` with devices a GPU index (``0``), ``"cuda:N"``, ``"cpu"`` or
  ``"disk"`` (or its JSON text, or a ``.json`` file of it). A dict must place every weight
  and name real modules: checked on the model built on the meta device, naming the block left out.
* ``max_memory``: ``{0: "20GiB", "cpu": "60GiB"}`` or ``"0=20GiB,cpu=60GiB"`` (implies
  ``device_map="auto"``); without ``disk`` or an ``offload_folder`` it must hold the model
  in its dtype (the need is computed with accelerate's ``compute_module_sizes``).
* ``offload_folder``: where the weights placed on ``"disk"`` go.
* ``revision``: the hub branch, tag or commit of checkpoint, config and tokenizer.
* ``quantization_config``: a transformers ``QuantizationConfig`` or its dict (with
  ``quant_method``); its backend package (bitsandbytes, ...) must be installed.

accelerate's hooks move an offloaded block's weights in for its forward and out again, so
the hooks at its sites see the same activations as in memory; a placed model takes its
inputs on its embedding's execution device (:func:`input_device`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InterlayerError, choices
from ..io.dtypes import DTYPES, dtype_name, parse_dtype

log = logging.getLogger(__name__)

DEVICE_MAP_WORDS = ("auto", "balanced", "balanced_low_0", "sequential")
"""The placement strategies accelerate computes itself (``device_map="auto"``, ...)."""

QUANTIZATIONS = ("bnb-4bit", "bnb-8bit")
"""The ``--quantization`` names (bitsandbytes 4-bit NF4 and 8-bit); other schemes are
given from Python as a transformers ``QuantizationConfig`` or its dict."""

_BACKENDS = {"bitsandbytes": "bitsandbytes", "gptq": "gptqmodel", "awq": "awq", "hqq": "hqq",
             "quanto": "optimum.quanto", "torchao": "torchao", "aqlm": "aqlm", "eetq": "eetq"}
"""The package each quantisation method needs, checked before loading."""

HF_KEYWORDS = ("attn_implementation", "device_map", "max_memory", "offload_folder", "revision", "quantization_config")
"""The ``from_pretrained`` keywords :func:`interlayer.load_model` passes on when given."""


# ------------------------------------------------------------------ dtype
def resolve_dtype(requested: str | torch.dtype | None, config: Any, on_gpu: bool) -> torch.dtype:
    """The weights dtype to load in: ``None`` is float32; ``"auto"`` is the checkpoint's
    own (``config.dtype``, formerly ``torch_dtype``) on a GPU and float32 on a CPU, where
    half-precision matmuls are slow or missing; anything else is what it names.

    Raises:
        InterlayerError: an unknown dtype name.
    """
    if requested is None:
        return torch.float32
    if isinstance(requested, str) and requested == "auto":
        if not on_gpu:
            return torch.float32
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(saved, str):
            saved = DTYPES.get(saved.removeprefix("torch."))
        return saved if saved in DTYPES.values() else torch.float32
    return parse_dtype(requested, "weights dtype")


def targets_gpu(device: torch.device, device_map: str | Mapping[str, Any] | None, cuda_available: bool) -> bool:
    """Whether the weights go to a GPU: ``device`` without a device map; with a map, any
    GPU entry in it (a strategy word: whether CUDA is available)."""
    if device_map is None:
        return device.type == "cuda"
    if isinstance(device_map, str):
        return cuda_available
    return any(_is_gpu(value) for value in device_map.values())


def warn_slow_dtype(dtype: torch.dtype, on_gpu: bool) -> None:
    """Log a warning for float16 weights on a CPU (slow, and overflow-prone in float16's range)."""
    if dtype == torch.float16 and not on_gpu:
        log.warning("float16 weights on a CPU are slow and may overflow; bfloat16 or float32 suit a CPU better")


def _is_gpu(value: Any) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, int) or (isinstance(value, str) and value.startswith("cuda"))


# ------------------------------------------------------------ parsing
def parse_device_map(value: str | Mapping[str, Any] | None) -> str | dict[str, Any] | None:
    """A device map: a strategy word (:data:`DEVICE_MAP_WORDS`), a dict ``{module: device}``,
    or the JSON text or ``.json`` file of one; devices are GPU indices, ``"cuda:N"``,
    ``"cpu"`` or ``"disk"``.

    Raises:
        InterlayerError: anything else, naming the valid forms.
    """
    if value is None or isinstance(value, Mapping):
        return None if value is None else _check_devices(dict(value))
    text = str(value).strip()
    if text in DEVICE_MAP_WORDS:
        return text
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InterlayerError(f"device map {text!r} is neither {choices(DEVICE_MAP_WORDS)}, a JSON object "
                                  "nor a .json file of one")
        text = path.read_text()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise InterlayerError(f"device map {str(value)!r} is not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(parsed, dict):
        raise InterlayerError(f"device map {str(value)!r} must be a JSON object {{module: device}}")
    return _check_devices(parsed)


def _check_devices(device_map: dict[str, Any]) -> dict[str, Any]:
    for module, device in device_map.items():
        ok = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or isinstance(device, torch.device)
        ok = ok or (isinstance(device, str) and (device in ("cpu", "disk", "mps") or device.startswith(("cuda", "xpu"))))
        if not isinstance(module, str) or not ok:
            raise InterlayerError(f"device map entry {module!r}: {device!r} is not a device; valid devices: a GPU "
                                  "index (0), 'cuda:N', 'cpu' or 'disk'")
    return device_map


def parse_max_memory(value: str | Mapping[Any, Any] | None) -> dict[int | str, int | str] | None:
    """Memory limits per device: ``"0=20GiB,cpu=60GiB"`` (or the dict ``{0: "20GiB", "cpu": "60GiB"}``).

    Raises:
        InterlayerError: a bad device or size, naming the valid forms.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for part in filter(str.strip, str(value).split(",")):
            device, sep, size = part.partition("=")
            if not sep:
                raise InterlayerError(f"max memory {str(value)!r}: {part.strip()!r} is not device=size, "
                                      "e.g. 0=20GiB,cpu=60GiB")
            items.append((device.strip(), size.strip()))
    limits: dict[int | str, int | str] = {}
    for device, size in items:
        key = int(device) if isinstance(device, int) or str(device).isdigit() else str(device)
        if not isinstance(key, int) and key not in ("cpu", "mps", "disk") and not key.startswith("xpu"):
            raise InterlayerError(f"max memory device {device!r} is not a GPU index, 'cpu', 'mps' or 'disk'")
        _size_bytes(size)
        limits[key] = size
    if not limits:
        raise InterlayerError("max memory is empty: give device=size pairs, e.g. 0=20GiB,cpu=60GiB")
    return limits


def _size_bytes(size: int | str) -> int:
    require_accelerate()
    from accelerate.utils import convert_file_size_to_int

    try:
        return int(convert_file_size_to_int(size))
    except (ValueError, TypeError):
        raise InterlayerError(f"memory size {size!r} is not a size such as 20GiB, 512MB or 1000000 (bytes)") from None


def quantization_for(name: str | None, dtype: torch.dtype) -> Any:
    """The transformers config of a :data:`QuantizationConfig` name (``None``: none).

    Raises:
        InterlayerError: an unknown name.
    """
    if name is None:
        return None
    if name not in QUANTIZATIONS:
        raise InterlayerError(f"unknown quantization {name!r}; valid choices: {choices(QUANTIZATIONS)}")
    from transformers import BitsAndBytesConfig

    if name == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def check_quantization(config: Any) -> Any:
    """A ``QuantizationConfig`` (a dict is read by transformers' ``AutoQuantizationConfig``),
    its backend package checked to be installed, before anything loads.

    Raises:
        InterlayerError: an unreadable config or a missing backend, in one line.
    """
    if config is None:
        return None
    if isinstance(config, Mapping):
        from transformers.quantizers.auto import AutoQuantizationConfig

        if "quant_method" not in config:
            raise InterlayerError(f"quantization_config {dict(config)!r} names no quant_method; valid methods: "
                                  f"{choices(_BACKENDS)}")
        try:
            config = AutoQuantizationConfig.from_dict(dict(config))
        except (ValueError, TypeError, ImportError) as err:
            raise InterlayerError(f"quantization_config {dict(config)!r} is not readable: {_first_line(err)}") from None
    method = getattr(config, "quant_method", "")
    method = str(getattr(method, "value", method)).lower()  # a QuantizationMethod enum or its text
    package = _BACKENDS.get(method)
    if package is not None and importlib.util.find_spec(package.partition(".")[0]) is None:
        where = "a CPU" if not torch.cuda.is_available() else "this machine"
        raise InterlayerError(f"quantization {method!r} needs the {package} package, which is not installed on "
                              f"{where}; install it, or load the model unquantised (dtype='bfloat16' halves memory)")
    return config


# ------------------------------------------------------------ checks
def check_placement(config: Any, options: Mapping[str, Any], dtype: torch.dtype, trust_remote_code: bool) -> None:
    """Before loading: a device map dict must place every weight and name only real
    modules; ``max_memory`` without disk must hold the model in ``dtype``. Both are
    checked on the model built from ``config`` on the meta device (no memory, no weights).

    Raises:
        InterlayerError: a block placed nowhere (named), an unknown module, or too little memory (with the need).
    """
    device_map, max_memory = options.get("device_map"), options.get("max_memory")
    if not isinstance(device_map, Mapping) and max_memory is None:
        return
    model = meta_model(config, dtype, trust_remote_code)
    if isinstance(device_map, Mapping):
        _check_coverage(model, device_map)
    if max_memory is not None and options.get("quantization_config") is None:
        _check_memory(model, max_memory, dtype, options.get("offload_folder") is not None)


def meta_model(config: Any, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model of ``config`` with its weights on the meta device (accelerate's ``init_empty_weights``)."""
    require_accelerate()
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype)


def _check_coverage(model: nn.Module, device_map: Mapping[str, Any]) -> None:
    names = list(model.state_dict())
    modules = dict(model.named_modules())
    units = placement_units(model)
    unknown = [key for key in device_map if key != "" and key not in modules and key not in names]
    if unknown:
        raise InterlayerError(f"device map names {', '.join(map(repr, unknown))}, not a module of "
                              f"{type(model).__name__}; its blocks: {choices(units)}")

    def covered(name: str) -> bool:
        return any(key == "" or name == key or name.startswith(key + ".") for key in device_map)

    touched = {".".join(n.split(".")[:i]) for n in names if covered(n) for i in range(len(n.split(".")) + 1)}
    missing: list[str] = []
    for name in names:
        if covered(name):
            continue
        parts = name.split(".")
        prefix = next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in touched)
        if prefix not in missing:
            missing.append(prefix)
    if missing:
        raise InterlayerError(f"device map puts {', '.join(missing)} on no device; give every block a device "
                              f"(a GPU index, 'cpu' or 'disk'); the blocks: {choices(units)}")


def placement_units(model: nn.Module) -> list[str]:
    """Module names a device map places whole: the model's unsplittable blocks
    (``_no_split_modules``) and the modules with weights of their own outside them."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    out: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if prefix and (type(module).__name__ in no_split or not module._modules
                       or any(True for _ in module.parameters(recurse=False))):
            if any(True for _ in module.parameters()):
                out.append(prefix)
            return
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return out


def _check_memory(model: nn.Module, max_memory: Mapping[Any, Any], dtype: torch.dtype, offload: bool) -> None:
    require_accelerate()
    from accelerate.utils import compute_module_sizes

    if offload or "disk" in max_memory:
        return  # what does not fit goes to disk
    need = int(compute_module_sizes(model, dtype=dtype)[""])
    have = sum(_size_bytes(size) for size in max_memory.values())
    if need > have:
        limits = ",".join(f"{device}={size}" for device, size in max_memory.items())
        raise InterlayerError(f"max memory {limits} holds {_gib(have)} but the model needs {_gib(need)} in "
                              f"{dtype_name(dtype)}; raise a limit, or pass offload_folder to put the rest on disk")


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.2f} MiB"


# --------------------------------------------------------- dispatched models
def input_device(model: nn.Module, embed: nn.Module) -> torch.device:
    """The device ``model`` takes its inputs on: where its embedding runs, which for a
    model accelerate placed (``hf_device_map``) is the execution device of the nearest
    hook on the embedding or a module holding it (its weights may be on ``meta``, offloaded)."""
    if getattr(model, "hf_device_map", None) is None:
        return embed.weight.device
    chain = [embed]
    for name, module in model.named_modules():
        if module is embed:
            parts = name.split(".")
            chain += [model.get_submodule(".".join(parts[:i])) for i in range(len(parts) - 1, -1, -1)]
            break
    for module in chain:
        device = _execution_device(getattr(module, "_hf_hook", None))
        if device is not None:
            return device
    return embed.weight.device


def _execution_device(hook: Any) -> torch.device | None:
    for one in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        device = getattr(one, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return None


def materialized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each offloaded (``meta``) tensor read from the weights
    map of accelerate's hook on its module, so it holds every weight's value."""
    state = model.state_dict()
    for name, tensor in state.items():
        if tensor.device.type != "meta":
            continue
        module_name, _, attr = name.rpartition(".")
        hook = getattr(model.get_submodule(module_name), "_hf_hook", None)
        for one in getattr(hook, "hooks", None) or [hook]:
            weights = getattr(one, "weights_map", None)
            if weights is not None and attr in weights:
                state[name] = weights[attr]
                break
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require_accelerate() -> None:
    """Refuse, in one line, a placement option without accelerate installed.

    Raises:
        InterlayerError: accelerate is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise InterlayerError("device_map, max_memory and offloading need accelerate: "
                              "pip install 'interlayer[placement]' (or accelerate)")
