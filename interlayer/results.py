"""The one result protocol: every public result of the toolkit is a dataclass with

* ``to_frame()``: a long-format pandas DataFrame;
* ``plot()``: a plotly figure (every estimate drawn with its interval);
* ``to_json()`` / ``from_json(payload)``: a lossless JSON payload, the one the CLI's
  ``--out FILE.json`` writes;
* ``save(path)`` / ``load(path)`` (this mixin): that JSON written atomically and read back,
  so what a command wrote loads into the same object in Jupyter;
* ``_repr_html_()`` (this mixin): a compact table of the key numbers (:meth:`Result.headline`),
  not a figure.

Arrays are stored as ``{"dtype", "shape", "values"}`` (:func:`encode_array`), which
JSON holds exactly (a float32 or float64 prints and parses back to the same bits).
"""

from __future__ import annotations

import html
import json
import math
import numbers
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from .errors import InterlayerError

R = TypeVar("R", bound="Result")

__all__ = ["Result", "decode_array", "decode_frame", "encode_array", "encode_frame", "require"]


class Result:
    """Mixin of every result dataclass: ``save``, ``load`` and ``_repr_html_`` over the
    class's own ``to_json``/``from_json``/``headline``."""

    def to_json(self) -> dict[str, Any]:
        """The JSON payload (what the CLI writes); subclasses define it."""
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[R], payload: dict[str, Any]) -> R:
        """The result rebuilt from :meth:`to_json`'s payload; subclasses define it."""
        raise NotImplementedError

    def headline(self) -> dict[str, Any]:
        """The key numbers shown by :meth:`_repr_html_`: by default the payload's scalar
        fields (numbers, strings, booleans), in its order."""
        return {k: v for k, v in self.to_json().items() if _scalar(v)}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (a ``.json`` file) atomically, exactly as the
        CLI's ``--out`` does; returns the path. :meth:`load` reads it back."""
        from .io.files import write_json_atomic

        path = Path(path).expanduser()
        if path.suffix != ".json":
            raise InterlayerError(f"{type(self).__name__}.save writes JSON: give a .json path, not {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """The result a :meth:`save` (or a CLI ``--out FILE.json``) wrote to ``path``."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InterlayerError(f"{str(path)!r} does not exist; give a .json file written by {cls.__name__}.save "
                                  "or a command's --out")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InterlayerError(f"{path} is not a JSON file ({err}); give a file written by {cls.__name__}.save") from err
        if not isinstance(payload, dict):
            raise InterlayerError(f"{path} holds a JSON {type(payload).__name__}, not a saved {cls.__name__}")
        try:
            return cls.from_json(payload)
        except (KeyError, TypeError, ValueError) as err:
            raise InterlayerError(f"{path} is not a saved {cls.__name__} ({type(err).__name__}: {err})") from err

    def _repr_html_(self) -> str:
        """A small HTML table of :meth:`headline` (every key and value escaped)."""
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in self.headline().items())
        return f"<table class='interlayer-result'><caption>{html.escape(type(self).__name__)}</caption>{rows}</table>"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, numbers.Number))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_fmt(v) for v in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    return str(value)


def require(payload: dict[str, Any], *keys: str, what: str) -> None:
    """Raise a one-line error naming the first of ``keys`` missing from ``payload``."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise KeyError(f"no field {missing[0]!r} in the payload of a {what}")


def encode_array(value: Any) -> dict[str, Any] | None:
    """A tensor or numpy array as ``{"dtype", "shape", "values"}`` (flat), or ``None``."""
    if value is None:
        return None
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        dtype = str(value.dtype).removeprefix("torch.")
        array = value.float().numpy() if dtype == "bfloat16" else value.numpy()
    else:
        array = np.asarray(value)
        dtype = str(array.dtype)
    return {"dtype": dtype, "shape": list(array.shape), "values": array.reshape(-1).tolist()}


def decode_array(payload: dict[str, Any] | None, kind: str = "numpy") -> Any:
    """The inverse of :func:`encode_array`: a numpy array (``kind="numpy"``) or a torch tensor."""
    if payload is None:
        return None
    shape = tuple(payload["shape"])
    if kind == "torch":
        import torch

        return torch.tensor(payload["values"], dtype=getattr(torch, payload["dtype"])).reshape(shape)
    return np.asarray(payload["values"], dtype=payload["dtype"]).reshape(shape)


def encode_frame(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A DataFrame as ``{"columns": [...], "data": [column values, ...]}`` (JSON-able, the
    column order kept through key-sorted JSON; numpy scalars made plain)."""
    return {"columns": [str(c) for c in frame.columns],
            "data": [[v.item() if hasattr(v, "item") else v for v in frame[c].tolist()] for c in frame.columns]}


def decode_frame(payload: dict[str, list[Any]]) -> pd.DataFrame:
    """The inverse of :func:`encode_frame`."""
    return pd.DataFrame({name: list(values) for name, values in zip(payload["columns"], payload["data"])},
                        columns=list(payload["columns"]))
