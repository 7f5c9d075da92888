"""Run by .venv-repeng/bin/python: repeng 0.4.0's ControlModel steers a saved model.

argv: model_dir vector.gguf ids.json out.npz. Loads the model (float32, its own
transformers 4.x), reads the control vector with ControlVector.import_gguf, wraps the model
in ControlModel(model, layer_ids=the vector's keys) and writes the last-position logits of
each prompt without (``base``) and with the control (``steered``, coefficient 1)."""
import json
import sys

import numpy as np
import torch
from repeng import ControlModel, ControlVector
from transformers import AutoModelForCausalLM


def main() -> None:
    model_dir, vector_path, ids_path, out = sys.argv[1:5]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    vector = ControlVector.import_gguf(vector_path)
    controlled = ControlModel(model, list(vector.directions))
    rows = json.loads(open(ids_path).read())
    base, steered = [], []
    with torch.no_grad():
        for row in rows:
            x = torch.tensor([row])
            controlled.reset()
            base.append(controlled(input_ids=x).logits[0, -1].double().numpy())
            controlled.set_control(vector, 1.0)
            steered.append(controlled(input_ids=x).logits[0, -1].double().numpy())
    np.savez(out, base=np.stack(base), steered=np.stack(steered), layers=np.array(sorted(vector.directions)))


if __name__ == "__main__":
    main()
