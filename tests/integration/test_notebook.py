"""The quickstart notebook's code runs top to bottom on the embedded model."""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(gemma):
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 5
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), namespace)
    assert namespace["lens"].table().shape[0] == 18
    assert not (namespace["plain"] == namespace["steered"]).all()
    assert not torch.equal(namespace["clean"]["logits"], namespace["steered_acts"]["logits"])
    assert len(namespace["similarity"]) == 18 and len(namespace["tokens"]) > 10
    assert namespace["latent"].n_words > 20
    assert set(namespace["alignment"].scores) == {"fra_Latn", "zho_Hans"}


@pytest.mark.slow
def test_steering_notebook_runs(gemma):
    path = NOTEBOOK.parent / "steering.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), path.name, "exec"), namespace)
    assert namespace["vector"].layers == [4, 8, 12]
    assert namespace["result"].shift.shape == (3, 3) and namespace["result"].best["layer"] in (4, 8, 12)
    assert abs(float(namespace["pure"][8] @ namespace["other"][8])) < 1e-3 * float(namespace["other"][8].norm())
    assert namespace["back"].layers == [4, 8, 12]


@pytest.mark.slow
def test_knowledge_notebook_runs(gemma):
    path = NOTEBOOK.parent / "knowledge.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), path.name, "exec"), namespace)
    iks = namespace["iks"]
    assert len(iks.mean) == 18 and iks.candidates == [10, 12, 14, 16] and iks.layer in iks.candidates
    assert set(namespace["runs"]) == {"greedy", "lfd", "dola"}
    assert all(s.layer in (10, 12, 14, 16) for s in namespace["runs"]["lfd"].steps)
    assert len(namespace["qa"].scores) == 6 and len(namespace["sim"].mean) == 18
