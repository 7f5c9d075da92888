"""The red team's cases (``reviews/redteam.md``, issue 22 part 5), one test each, named
after the case: what lost data, failed late, was accepted silently or gave a traceback
now is a one-line error before the computation, or is kept."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save, save_file

import interlayer
from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.io.files import check_writable, write_atomic, write_json_atomic
from interlayer.steering import SteeringVector, from_gguf, steer, to_gguf
from interlayer.steering.inject import MAX_EDIT_RATIO, NonFiniteSteeringError, SteeringStrengthError
from interlayer.steering.vectors import SteeringFileError, directions_sha256
from tests.tiny_models import make_tiny, make_tokenizer

D = 32  # the tiny models' d_model; they have 3 layers


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def unit_vector(layers=(1, 2), seed=0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({l: (lambda v: v / v.norm())(torch.randn(D, generator=g)) for l in layers}, model="tiny")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------ D1: data lost
def test_P2_report_does_not_overwrite_a_users_json(model, tmp_path):
    from interlayer.report import build_report
    from interlayer.report.build import REPORT_SCHEMA, check_outputs
    from tests.unit.report.test_report import TINY

    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "precious data"}')
    with pytest.raises(InterlayerError, match=r"would overwrite '.*mine\.json', which is not an interlayer report") as err:
        build_report(model, tmp_path / "mine.html", only="model", profile=TINY, progress=False)
    assert "another --out" in one_line(err)
    assert mine.read_text() == '{"my": "precious data"}' and not (tmp_path / "mine.html").exists()
    # the report's own earlier output is recognised: a rerun resumes and rewrites it
    files = build_report(model, tmp_path / "r.html", only="model", profile=TINY, progress=False)
    assert json.loads(files.json.read_text())["schema"] == REPORT_SCHEMA
    again = build_report(model, tmp_path / "r.html", only="model", profile=TINY, progress=False)
    assert again.results["model"].numbers == files.results["model"].numbers
    # a report written before the marker existed is still the report's own
    payload = json.loads(files.json.read_text())
    files.json.write_text(json.dumps({k: payload[k] for k in ("model", "profile", "lens", "sections")}))  # its keys
    check_outputs(tmp_path / "r.html")


def test_P2_report_command_refuses_before_the_model_loads(tmp_path, capsys):
    from interlayer.cli import dispatch as cli

    mine = tmp_path / "gemma.json"
    mine.write_text('{"l_star": 7}')  # an earlier `iks --out gemma.json`
    assert cli.main(["report", "--model", "no-such-model-dir", "--only", "model", "--out", str(tmp_path / "gemma.html")]) == 2
    err = capsys.readouterr().err
    assert "would overwrite" in err and "gemma.json" in err and "no-such-model-dir" not in err  # the model never loaded
    assert mine.read_text() == '{"l_star": 7}'


def test_P2_report_does_not_overwrite_a_users_tables_or_parts(tmp_path):
    from interlayer.report.build import check_outputs

    (tmp_path / "t.tables").mkdir()
    (tmp_path / "t.tables" / "model.model_card.csv").write_text("mine\n")  # the name a table would get
    (tmp_path / "t.tables" / "notes.txt").write_text("mine\n")
    with pytest.raises(InterlayerError, match=r"would overwrite '.*t\.tables/model\.model_card\.csv'"):
        check_outputs(tmp_path / "t.html")
    (tmp_path / "p.parts").mkdir()
    (tmp_path / "p.parts" / "model.json").write_text('{"mine": 1}')
    with pytest.raises(InterlayerError, match=r"would overwrite '.*p\.parts/model\.json'"):
        check_outputs(tmp_path / "p.html")
    (tmp_path / "p.parts" / "model.json").write_text('{"key": "abc", "result": {}}')  # a resume file: ours
    check_outputs(tmp_path / "p.html")
    (tmp_path / "ok.tables").mkdir()
    (tmp_path / "ok.tables" / "notes.txt").write_text("mine\n")  # nothing the report would replace
    check_outputs(tmp_path / "ok.html")


def test_P2_report_help_names_the_side_files():
    from interlayer.report.config import ReportConfig

    out = next(f for f in dataclasses.fields(ReportConfig) if f.name == "out")
    text = json.dumps({k: str(v) for k, v in out.metadata.items()})
    assert "NAME.json" in text and "NAME.tables" in text and "NAME.parts" in text


# ------------------------------------------------------------------ D2, D8: output paths
def test_S5_K4_an_out_in_a_missing_directory_is_created(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "v.json"
    assert check_writable(target, suffixes=(".json",)) == target  # the check accepts it...
    write_json_atomic(target, {"a": 1})  # ...and the writer makes the folders
    assert json.loads(target.read_text()) == {"a": 1}
    vector = unit_vector()
    assert SteeringVector.load(vector.save(tmp_path / "nodir" / "v.safetensors")).layers == [1, 2]
    assert from_gguf(to_gguf(vector, tmp_path / "nodir2" / "v.gguf")).layers == [1, 2]


def test_D8_write_atomic_never_replaces_a_users_part_file(tmp_path):
    target = tmp_path / "x.json"
    (tmp_path / "x.json.part").write_text("the user's own file")
    write_atomic(target, b"new")
    write_atomic(target, b"newer")
    assert target.read_bytes() == b"newer"
    assert (tmp_path / "x.json.part").read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.json.part"]  # no temporary left behind
    assert (target.stat().st_mode & 0o777) == (tmp_path.joinpath("x.json.part").stat().st_mode & 0o777)


# ------------------------------------------------------------------ D3: vector integrity
def _flip(path, offset_from_end: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= mask
    path.write_bytes(bytes(data))


def test_S15_a_flipped_bit_in_a_saved_vector_is_refused(tmp_path):
    path = unit_vector().save(tmp_path / "v.safetensors")
    meta_sha = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    assert meta_sha["sha256"] == directions_sha256(unit_vector().directions)
    _flip(path, 2, 0x40)  # an exponent byte of the last element: one value becomes huge
    with pytest.raises(SteeringFileError, match=r"v\.safetensors is damaged: its tensors' sha256") as err:
        SteeringVector.load(path)
    one_line(err)
    low = unit_vector().save(tmp_path / "low.safetensors")
    _flip(low, 4, 0x01)  # the lowest mantissa bit: a change of about 1e-8, still caught
    with pytest.raises(SteeringFileError, match="is damaged"):
        SteeringVector.load(low)


def _old_file(path, directions, **meta) -> None:
    """A vector file as interlayer wrote them before checksums (and the chat field)."""
    base = {"format": "1", "site": "resid_post", "method": "mean_diff", "read": "last", "normalized": "true",
            "model": "tiny", "weights_sha256": "", "dataset": "d", "n_pairs": "4",
            "layers": json.dumps(sorted(directions)), "extra": json.dumps({"chat": True})}
    save_file({f"direction.{l}": v for l, v in directions.items()}, str(path), metadata={**base, **meta})


def test_S15_old_vectors_without_a_checksum_load_but_are_checked(tmp_path, caplog):
    v = unit_vector()
    _old_file(tmp_path / "old.safetensors", v.directions)
    with caplog.at_level(logging.INFO, logger="interlayer.steering.vector_file"):
        back = SteeringVector.load(tmp_path / "old.safetensors")
    assert "carries no checksum" in caplog.text
    assert all(torch.equal(back[l], v[l]) for l in v.layers) and back.chat is True and "chat" not in back.extra
    broken = dict(v.directions)
    broken[2] = broken[2].clone()
    broken[2][0] = float("inf")
    _old_file(tmp_path / "inf.safetensors", broken)
    with pytest.raises(SteeringFileError, match=r"inf\.safetensors: layer 2's direction holds 1 NaN or infinite"):
        SteeringVector.load(tmp_path / "inf.safetensors")
    _old_file(tmp_path / "long.safetensors", {1: v[1] * 1.5})
    with pytest.raises(SteeringFileError, match=r"long\.safetensors is marked normalized, but its direction at "
                                                r"layer 1 has norm 1\.5, not 1: the file is damaged"):
        SteeringVector.load(tmp_path / "long.safetensors")


def test_S15_the_chat_field_is_saved_and_loaded(model, tmp_path):
    from tests.unit.steering.test_vectors import PAIRS

    trained = interlayer.steering.train_vectors(model, PAIRS, [1], progress=False)
    assert trained.chat is False and SteeringVector.load(trained.save(tmp_path / "t.safetensors")).chat is False
    assert unit_vector().chat is None
    chat = dataclasses.replace(unit_vector(), chat=True)
    assert SteeringVector.load(chat.save(tmp_path / "c.safetensors")).chat is True
    assert from_gguf(to_gguf(chat, tmp_path / "c.gguf")).chat is True
    with pytest.raises(InterlayerError, match="chat must be True, False or None"):
        SteeringVector({1: torch.ones(D)}, chat="yes")


# ------------------------------------------------------------------ D5: malformed vector files
def _gguf(path, tensors: dict[str, np.ndarray], metadata: str | None = None, arch: str = "controlvector",
          fields: dict[str, str] | None = None):
    """A control-vector GGUF written by hand: ``tensors`` by name, string ``fields`` (and
    ``interlayer.metadata`` when given), as interlayer, llama.cpp or an older version would."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(tensors))
    if metadata is not None:
        writer.add_string("interlayer.metadata", metadata)
    for key, value in (fields or {}).items():
        writer.add_string(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


UNIT = (np.ones(D) / np.sqrt(D)).astype(np.float32)


@pytest.mark.parametrize("case, tensors, metadata, message", [
    ("S20", {"direction.x": UNIT}, None, r"tensor 'direction\.x' is not named direction\.<layer>"),
    ("S21", {"direction.1": UNIT}, "{not json", r"interlayer\.metadata is not valid JSON"),
    ("S22", {"direction.1": UNIT}, json.dumps({"normalized": True}),
     r"metadata field 'normalized' must be a string, got bool True"),
    ("S23", {"direction.1": UNIT}, json.dumps({"n_pairs": "many"}),
     r"metadata field 'n_pairs' is 'many'; expected a whole number"),
    ("S22b", {"direction.1": UNIT}, json.dumps([1, 2]), r"interlayer\.metadata is a JSON list, not an object"),
    ("S26", {"direction.1": UNIT.reshape(2, D // 2)}, None,
     r"direction\.1 has shape \[2, 16\]; llama\.cpp control vectors hold one \[n_embd\] vector per layer "
     r"\(expected shape \[d_model\]\)"),
    ("S27", {"direction.1": np.full(D, np.nan)}, None, r"layer 1's direction holds 32 NaN or infinite value"),
])
def test_S20_to_S27_malformed_gguf_control_vectors_are_one_line_errors(tmp_path, case, tensors, metadata, message):
    path = _gguf(tmp_path / f"{case}.gguf", tensors, metadata)
    with pytest.raises(SteeringFileError, match=message) as err:
        from_gguf(path)
    assert str(path) in one_line(err)


def test_S26_a_2x16_direction_names_the_models_width(model, tmp_path):
    path = _gguf(tmp_path / "flat.gguf", {"direction.1": UNIT.reshape(2, D // 2)})
    with pytest.raises(SteeringFileError, match=r"has shape \[2, 16\]; .*\(expected shape \[32\]\)"):
        from_gguf(path, model)


def test_S24_gguf_layer_numbering_is_still_checked(tmp_path):
    with pytest.raises(SteeringFileError, match="llama.cpp numbers layers from 1"):
        from_gguf(_gguf(tmp_path / "zero.gguf", {"direction.0": UNIT}))


def test_S25_a_layer_the_model_lacks_is_refused_naming_its_layer_count(model, tmp_path):
    path = _gguf(tmp_path / "deep.gguf", {"direction.999": UNIT})
    assert from_gguf(path).layers == [999]  # without a model there is nothing to check it against
    with pytest.raises(LayerIndexError, match=r"deep\.gguf: the vector has layer 999, but .* has 3 layers; "
                                              r"valid layers are 0\.\.2"):
        from_gguf(path, model)
    SteeringVector({998: torch.from_numpy(UNIT)}).save(tmp_path / "deep.safetensors")
    with pytest.raises(LayerIndexError, match="has 3 layers"):
        SteeringVector.load(tmp_path / "deep.safetensors", model)
    with pytest.raises(LayerIndexError, match="has 3 layers"):
        steer(model, SteeringVector({998: torch.from_numpy(UNIT)}), 1.0)


@pytest.mark.parametrize("case, tensors, metadata, message", [
    ("S28-site", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1"}, r"the metadata names no 'site'"),
    ("S28-name", {"direction.x": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post"},
     r"tensor 'direction\.x' is not named direction\.<layer>"),
    ("S28-json", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post", "normalized": "{no"},
     r"metadata field 'normalized' is not valid JSON"),
    ("S28-bool", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post", "normalized": "3"},
     r"metadata field 'normalized' is '3'; expected true or false"),
    ("S28-pairs", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post", "n_pairs": "many"},
     r"metadata field 'n_pairs' is 'many'"),
    ("S28-extra", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post", "extra": "[1]"},
     r"metadata field 'extra' is '\[1\]'; expected a JSON object"),
    ("S28-layers", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "resid_post", "layers": "[1, 2]"},
     r"lists layers \[1, 2\], but the file holds directions for \[1\]"),
    ("S28-shape", {"direction.1": torch.ones(2, 16)}, {"format": "1", "site": "resid_post"},
     r"direction\.1 has shape \[2, 16\]; expected one \[d_model\] vector per layer"),
    ("S29-site", {"direction.1": torch.from_numpy(UNIT)}, {"format": "1", "site": "bogus"}, r"unknown site kind 'bogus'"),
])
def test_S28_S29_malformed_safetensors_vectors_are_one_line_errors(tmp_path, case, tensors, metadata, message):
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(SteeringFileError, match=message) as err:
        SteeringVector.load(path)
    assert str(path) in one_line(err)


def test_S28_a_minimal_hand_made_vector_loads(tmp_path):
    path = tmp_path / "min.safetensors"
    save_file({"direction.2": torch.from_numpy(UNIT)}, str(path), metadata={"format": "1", "site": "resid_post"})
    vector = SteeringVector.load(path)
    assert vector.layers == [2] and vector.normalized is True and vector.chat is None


# ------------------------------------------------------------------ D4, D8: steering strength and NaN
def test_S11_a_coefficient_that_dwarfs_the_residual_stream_is_refused(model):
    v = unit_vector()
    ids = torch.tensor([[1, 5, 9, 12]])
    with steer(model, v, 4.0):  # an ordinary strength steers
        model.run(ids)
    with pytest.raises(SteeringStrengthError, match=r"resid_post\.1 with coefficient 1e\+20 is too strong: "
                                                    r"\|coef\| · \|\|v\|\| = 1e\+20 × 1 = 1e\+20, .* times the "
                                                    r"activations' mean norm there") as err:
        with steer(model, v, 1e20):
            model.run(ids)
    assert f"{MAX_EDIT_RATIO:g}x" in one_line(err)
    with pytest.raises(SteeringStrengthError, match="coefficient -1e\\+06"):  # generation stops on its first pass
        with steer(model, v, -1e6, layers=[2], positions="generated"):
            model.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with pytest.raises(SteeringStrengthError, match="ablating with \\|coef\\| = 5000"):
        with steer(model, v, 5000.0, operator="ablate"):
            model.run(ids)
    edits = steer(model, v, 1e20).edits()  # the store edits of a sweep are checked the same way
    with pytest.raises(SteeringStrengthError):
        interlayer.collect(model, [[1, 5, 9]], "resid_post.2", edits=edits, progress=False)


def test_S27_a_nan_direction_is_blamed_on_the_vector(model):
    v = unit_vector()
    v.directions[1][3] = float("nan")  # damaged after it was made (a file is refused on load)
    with pytest.raises(NonFiniteSteeringError, match="direction at layer 1 holds 1 NaN .* the vector is damaged "
                                                     r"\(not the coefficient\)"):
        with steer(model, v, 4.0):
            model.run(torch.tensor([[1, 5, 9]]))
    with pytest.raises(InterlayerError, match="layer 1's direction holds 1 NaN or infinite value"):
        SteeringVector({1: v[1]})


# ------------------------------------------------------------------ D5: SAE folders
def _sae_dir(tmp_path, name="sae"):
    from interlayer.saes import SAE
    from interlayer.saes.sae import SAEConfig

    return SAE(SAEConfig(d_in=D, d_sae=64, arch="topk", k=4, site="resid_post.1")).save(tmp_path / name)


@pytest.mark.parametrize("case, config, message", [
    ("P8", "{bad", r"cfg\.json is not valid JSON .*; the SAE config is damaged"),
    ("P8-list", "[1, 2]", r"cfg\.json holds a JSON list, not an SAE config object"),
    ("P8-type", None, r"cfg\.json: 'd_in' must be a whole number, got 'abc'"),
    ("P8-missing", None, r"cfg\.json: 'd_sae' must be a whole number, got None"),
    ("P8-format", '{"format": 7, "d_in": 32, "d_sae": 64}', r"not an interlayer SAE config of format 1 \(its 'format' is 7\)"),
])
def test_P8_an_sae_folder_with_an_invalid_cfg_json_is_a_one_line_error(tmp_path, case, config, message):
    from interlayer.report.sections_methods import check_sae_dir
    from interlayer.saes import SAE

    folder = _sae_dir(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    if case == "P8-type":
        config = json.dumps({**cfg, "d_in": "abc"})
    elif case == "P8-missing":
        config = json.dumps({k: v for k, v in cfg.items() if k != "d_sae"})
    (folder / "cfg.json").write_text(config)
    for load in (SAE.load, check_sae_dir):
        with pytest.raises(InterlayerError, match=message) as err:
            load(str(folder))
        assert str(folder) in one_line(err)


def test_P8_a_sparsify_folder_is_named_as_such(tmp_path):
    from interlayer.report.sections_methods import check_sae_dir
    from interlayer.saes import SAE

    folder = tmp_path / "layers.6"  # as EleutherAI/sparsify saves one hookpoint
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 2, "normalize_decoder": True, "num_latents": 0,
                                                 "k": 32, "multi_topk": False, "skip_connection": False, "d_in": D}))
    save_file({"encoder.weight": torch.zeros(64, D), "encoder.bias": torch.zeros(64), "W_dec": torch.zeros(64, D),
               "b_dec": torch.zeros(D)}, str(folder / "sae.safetensors"))
    with pytest.raises(InterlayerError, match=r"layers\.6 looks like an EleutherAI/sparsify SAE .* not interlayer's "
                                              r"own format; load it with interlayer\.saes\.load\(path\)") as err:
        SAE.load(str(folder))
    one_line(err)
    assert check_sae_dir(str(folder))["site"] == "resid_post.6"  # the one loader reads it
    assert SAE.load(_sae_dir(tmp_path, "ours")).d_sae == 64  # interlayer's own still loads


def test_P8_a_saelens_folder_with_an_invalid_cfg_json_is_a_one_line_error(tmp_path):
    from interlayer.saes.saelens import from_saelens

    folder = tmp_path / "lens_sae"
    folder.mkdir()
    (folder / "cfg.json").write_text("{bad")
    save_file({"W_enc": torch.zeros(D, 8)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(InterlayerError, match=r"cfg\.json is not valid JSON"):
        from_saelens(folder)


# ------------------------------------------------------------------ D6: slow failure
def test_S34_perplexity_tokens_beyond_the_packaged_sample_fail_up_front(model):
    from interlayer.steering.evaluation import check_perplexity_tokens, sweep
    from tests.unit.steering.test_evaluation import PAIRS

    assert check_perplexity_tokens(model, ["w5 w6 w7 w8 w9"] * 4, 12, context_length=8) == 12
    with pytest.raises(InterlayerError, match=r"--perplexity-tokens 100 is more than the perplexity text holds: "
                                              r"\d+ scored tokens \(in contexts of 8\); give at most \d+"):
        check_perplexity_tokens(model, ["w5 w6 w7 w8 w9"] * 4, 100, context_length=8)
    calls = []
    model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(InterlayerError, match=r"--perplexity-tokens 100000000 is more than the packaged sample text "
                                              r"holds: \d+ scored tokens") as err:
        sweep(model, unit_vector(), PAIRS, [1], [2.0], n=4, perplexity_tokens=10**8, progress=False)
    one_line(err)
    assert not calls  # before any forward pass


# ------------------------------------------------------------------ D8 minor: qa's skipped records
def test_Q7_qa_reports_the_records_it_skipped(tmp_path, caplog):
    from interlayer.lens.qa import evaluate_qa

    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    data = tmp_path / "qa.jsonl"
    rows = [{"question": "w5 w6", "answers": ["w20"]}, {"question": "w9 w9"}, {"question": "w7 w8", "answers": ["w21"]}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    progress = tmp_path / "new" / "folder" / "q.json.progress.jsonl"  # an --out in a folder not made yet
    with caplog.at_level(logging.WARNING, logger="interlayer.lens.qa"):
        result = evaluate_qa(model, str(data), 50, decodings="greedy", settings=("closed_book",), chat=False,
                             max_new_tokens=2, progress_file=progress, progress=False)
    assert result.n == 2 and result.skipped == 1
    assert "1 record(s) skipped: each needs a non-empty 'question' and 'answers'" in caplog.text
    assert "50 question(s) asked for, 2 available" in caplog.text
    assert progress.is_file()


# ------------------------------------------------------------------ packaging: the pyarrow guard
def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path, monkeypatch):
    from interlayer.store.inputs import check_data_file

    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # an import of it fails, as when it is not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InterlayerError, match=r"d\.parquet is a parquet file, and reading parquet needs pyarrow: "
                                              r"pip install 'interlayer\[data\]'") as err:
        check_data_file(path)
    one_line(err)


def test_saved_vectors_round_trip_exactly(tmp_path):
    v = unit_vector(layers=(0, 2))
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert all(torch.equal(back[l], v[l]) for l in v.layers) and back.normalized is True
    tensors = load_file(str(tmp_path / "v.safetensors"))
    assert sorted(tensors) == ["direction.0", "direction.2"]
    save(tensors)  # still a plain safetensors file
