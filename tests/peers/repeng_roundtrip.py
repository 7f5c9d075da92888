"""Run by .venv-repeng/bin/python: repeng 0.4.0 reads interlayer's GGUF and writes its own.

argv: ours.gguf theirs.gguf out.npz. Reads ours.gguf with ControlVector.import_gguf (its
directions by key and model_type go to out.npz) and writes theirs.gguf with
ControlVector.export_gguf from a directions dict {1: ..., 3: ...} (also saved in out.npz)."""
import sys

import numpy as np
from repeng import ControlVector


def main() -> None:
    ours, theirs, out = sys.argv[1:4]
    read = ControlVector.import_gguf(ours)
    rng = np.random.default_rng(0)
    made = ControlVector(model_type="llama", directions={1: rng.standard_normal(576).astype(np.float32),
                                                        3: rng.standard_normal(576).astype(np.float32)})
    made.export_gguf(theirs)
    arrays = {f"read_{k}": np.asarray(v) for k, v in read.directions.items()}
    arrays.update({f"made_{k}": v for k, v in made.directions.items()})
    np.savez(out, model_type=read.model_type, **arrays)


if __name__ == "__main__":
    main()
