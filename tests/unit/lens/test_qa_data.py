"""QA data and scoring (``interlayer qa``): loading the vendored sets and files, skipped
records and bad input, noise passages, SQuAD normalisation, exact match against
containment, and the Wilson interval against the formula worked by hand."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from importlib import resources

import pytest

from interlayer.errors import InterlayerError
from interlayer.lens.qa_data import QA_DATASETS, QARecord, load_qa, noise_passages, with_passages
from interlayer.lens.qa_metrics import (MethodScore, answer_contained, exact_match, first_answer_span,
                                        normalize_answer, proportion_ci, score)


def _write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def _records(passages):
    return [QARecord(f"q{i}", (f"a{i}",), p, id=str(i)) for i, p in enumerate(passages)]


# -- the vendored datasets ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, count, has_passages", [("nq", 500, True), ("squad", 500, True), ("known", 1209, False)])
def test_vendored_datasets_load_with_their_counts_and_passages(name, count, has_passages):
    loaded = load_qa(name)
    assert len(loaded.records) == count
    assert loaded.skipped == 0
    assert loaded.source == name
    assert all(r.question and r.answers and all(a for a in r.answers) for r in loaded.records)
    if has_passages:
        assert all(r.passage for r in loaded.records)
    else:
        assert all(r.passage is None for r in loaded.records)


def test_vendored_records_keep_their_fields():
    nq = load_qa("nq").records[0]
    assert nq.question == "who got the first nobel prize in physics"
    assert nq.answers == ("Wilhelm Conrad Röntgen",)
    assert nq.title == "List of Nobel laureates in Physics"
    assert "Röntgen" in nq.passage
    squad = load_qa("squad").records[0]
    assert squad.id == "56ddde6b9a695914005b9628"
    assert (squad.question, squad.answers) == ("In what country is Normandy located?", ("France",))
    assert "France" in squad.passage
    known = load_qa("known").records[0]
    assert (known.id, known.question, known.answers) == ("0", "Vinson Massif is located in the continent of",
                                                         ("Antarctica",))


def test_vendored_files_match_the_sums_in_source_txt():
    folder = resources.files("interlayer.lens").joinpath("data/knowledge")
    source = folder.joinpath("SOURCE.txt").read_text(encoding="utf-8")
    sums = dict(re.findall(r"^\s+(\S+)\s+.*sha256=([0-9a-f]{64})$", source, flags=re.M))
    assert set(sums) == {"nq_open_oracle_500.jsonl.gz", "squad_500.json", "known_1000.json"}
    for filename, expected in sums.items():
        assert hashlib.sha256(folder.joinpath(filename).read_bytes()).hexdigest() == expected, filename
    assert folder.joinpath("LICENSE-NOTICES.txt").is_file()


def test_n_takes_the_first_records():
    assert load_qa("squad", n=3).records == load_qa("squad").records[:3]
    assert len(load_qa("known", n=1).records) == 1


# -- files ----------------------------------------------------------------------------------------------------------

def test_jsonl_skips_and_counts_records_without_an_answer(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "capital of France?", "answers": ["Paris"], "passage": "Paris is the capital of France."},
        {"question": "no answer here"},
        {"question": "empty answers", "answers": []},
        {"question": "blank answer", "answer": "  "},
        {"question": "", "answers": ["x"]},
        {"question": "one answer", "answer": "Rome", "context": "Rome is in Italy.", "title": "Rome"},
        {"question": "ctxs format", "answers": ["Bern"], "ctxs": [{"title": "Bern", "text": "Bern is Swiss."}]},
    ])
    loaded = load_qa(str(path))
    assert loaded.skipped == 4
    assert loaded.source == str(path)
    assert [r.question for r in loaded.records] == ["capital of France?", "one answer", "ctxs format"]
    assert loaded.records[0] == QARecord("capital of France?", ("Paris",), "Paris is the capital of France.")
    assert loaded.records[1] == QARecord("one answer", ("Rome",), "Rome is in Italy.", "Rome")
    assert loaded.records[2] == QARecord("ctxs format", ("Bern",), "Bern is Swiss.", "Bern")


def test_json_list_and_gzipped_jsonl(tmp_path):
    items = [{"id": 7, "question": "q?", "answers": ["a", "b"]}, {"question": "r?", "answer": "c"}]
    (tmp_path / "qa.json").write_text(json.dumps(items), encoding="utf-8")
    (tmp_path / "qa.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(i) + "\n" for i in items).encode()))
    for name in ("qa.json", "qa.jsonl.gz"):
        loaded = load_qa(str(tmp_path / name))
        assert loaded.records == [QARecord("q?", ("a", "b"), id="7"), QARecord("r?", ("c",))]
        assert loaded.skipped == 0


def test_unknown_name_lists_the_choices_and_mentions_paths():
    with pytest.raises(InterlayerError, match=r"unknown QA dataset 'trivia'.*'nq', 'squad', 'known'.*\.json"):
        load_qa("trivia")
    assert QA_DATASETS == ("nq", "squad", "known")


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answers": ["a"]}\n{"question": oops}\n', encoding="utf-8")
    with pytest.raises(InterlayerError, match=r":2 is not valid JSON"):
        load_qa(str(path))
    broken = tmp_path / "bad.json"
    broken.write_text('[{"question": "q", ', encoding="utf-8")
    with pytest.raises(InterlayerError, match=r"bad\.json is not valid JSON"):
        load_qa(str(broken))


def test_file_without_usable_records_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", [{"question": "q"}, {"answers": ["a"]}])
    with pytest.raises(InterlayerError, match=r"no usable QA records \(2 skipped\)"):
        load_qa(str(path))


def test_other_bad_files(tmp_path):
    (tmp_path / "obj.json").write_text('{"question": "q", "answers": ["a"]}', encoding="utf-8")
    with pytest.raises(InterlayerError, match="must hold a JSON list"):
        load_qa(str(tmp_path / "obj.json"))
    (tmp_path / "list.jsonl").write_text('["q", "a"]\n', encoding="utf-8")
    with pytest.raises(InterlayerError, match=r"list\.jsonl:1 is a list, not an object"):
        load_qa(str(tmp_path / "list.jsonl"))
    (tmp_path / "qa.csv").write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(InterlayerError, match="unsupported file type"):
        load_qa(str(tmp_path / "qa.csv"))
    (tmp_path / "qa.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InterlayerError, match="not a valid gzip file"):
        load_qa(str(tmp_path / "qa.jsonl.gz"))


@pytest.mark.parametrize("n", [0, -3])
def test_n_below_one_is_an_error(n):
    with pytest.raises(InterlayerError, match="n must be at least 1"):
        load_qa("nq", n=n)


# -- noise passages -------------------------------------------------------------------------------------------------

def test_noise_never_holds_the_records_own_passage_and_is_deterministic():
    # records 0, 2 and 5 share one passage (as SQuAD questions share contexts); 3 has none
    records = _records(["P", "A", "P", None, "B", "P", "C", "A", "D"])
    for index in range(len(records)):
        noise = noise_passages(records, index, 3, seed=1)
        assert len(noise) == len(set(noise)) == 3
        assert records[index].passage not in noise
        assert noise == noise_passages(records, index, 3, seed=1)
    assert set(noise_passages(records, 0, 4)) == {"A", "B", "C", "D"}  # every other distinct passage
    draws = {tuple(noise_passages(records, 3, 2, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_noise_on_the_vendored_squad_excludes_shared_contexts():
    records = load_qa("squad").records
    for index in (0, 1, 250, 499):
        noise = noise_passages(records, index, 5, seed=0)
        assert records[index].passage not in noise
        assert noise == noise_passages(records, index, 5, seed=0)


def test_too_few_noise_passages_is_an_error():
    records = _records(["P", "A", "P"])
    with pytest.raises(InterlayerError, match="needs 2 noise passages but only 1"):
        noise_passages(records, 0, 2)
    with pytest.raises(InterlayerError, match="only 0"):
        noise_passages(load_qa("known", n=5).records, 0, 1)
    with pytest.raises(InterlayerError, match="out of range"):
        noise_passages(records, 3, 1)
    assert noise_passages(records, 0, 0) == []


def test_with_passages_holds_gold_and_noise_in_a_seeded_order():
    records = _records(["G", "A", "B", "C", "D", "E"])
    noise = noise_passages(records, 0, 4, seed=3)
    context = with_passages(records[0], noise, seed=3, index=0)
    assert sorted(context) == sorted(["G", *noise])
    assert context == with_passages(records[0], noise, seed=3, index=0)
    positions = {with_passages(records[0], noise, seed=s, index=0).index("G") for s in range(30)}
    assert len(positions) > 1  # the gold passage does not sit at a fixed place
    closed = QARecord("q", ("a",))
    assert sorted(with_passages(closed, ["X", "Y"], seed=0, index=1)) == ["X", "Y"]
    with pytest.raises(InterlayerError, match="own gold passage"):
        with_passages(records[0], ["A", "G"], seed=0, index=0)


# -- metrics --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normalised", [
    ("The Beatles.", "beatles"),
    ("  a   Tale of Two   Cities ", "tale of two cities"),
    ("an apple, the pear", "apple pear"),
    ("Theory", "theory"),  # "the" only as a whole word
    ("U.S.A.", "usa"),
    ("rock-n-roll", "rocknroll"),  # punctuation removed, not replaced by a space
    ("Wilhelm Conrad RÖNTGEN", "wilhelm conrad röntgen"),
    ("The", ""),
    ("", ""),
])
def test_normalize_answer_follows_squad(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_exact_match_against_containment():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"])
    assert not exact_match("It is the Eiffel Tower", ["Eiffel Tower"])
    assert answer_contained("It is the Eiffel Tower", ["Eiffel Tower"])
    assert exact_match("Paris", ["Lyon", "paris"])  # any answer
    assert exact_match("Paris", "Paris")  # a lone string is one answer
    assert not answer_contained("Paris", "Paris, France")  # the answer in the prediction, not the reverse
    assert answer_contained("in 1990s", ["1990"])  # characters, not words
    assert not exact_match("", ["The"]) and not answer_contained("anything", ["The", "a"])  # empty answers never count
    assert not exact_match("Paris", []) and not answer_contained("Paris", [])


def test_first_answer_span_is_the_first_line_stripped():
    assert first_answer_span(" Paris\nQuestion: what next?") == "Paris"
    assert first_answer_span("\n\n  Rome  \nmore") == "Rome"
    assert first_answer_span("Bern\r\nmore") == "Bern"
    assert first_answer_span("") == ""


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula():
    # 7/10: centre (0.7 + 0.19207) / 1.38415 = 0.64449, half 1.41600 * sqrt(0.021 + 0.0096037) = 0.24771
    low, high = proportion_ci(7, 10)
    assert (low, high) == pytest.approx(_wilson_by_hand(7, 10), abs=1e-12)
    assert (low, high) == pytest.approx((0.39678, 0.89221), abs=1e-4)
    # 0/5: the lower bound is exactly 0, the upper z^2 / (n + z^2) = 3.84146 / 8.84146 = 0.43449
    low, high = proportion_ci(0, 5)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(3.841458820694124 / (5 + 3.841458820694124), abs=1e-12)
    assert proportion_ci(5, 5) == pytest.approx((1 - high, 1.0), abs=1e-12)  # symmetric
    low99, high99 = proportion_ci(7, 10, level=0.99)
    assert (low99, high99) == pytest.approx(_wilson_by_hand(7, 10, z=2.5758293035489004), abs=1e-12)
    assert low99 < 0.39678 and high99 > 0.89221  # wider at a higher level
    assert all(math.isnan(v) for v in proportion_ci(0, 0))


@pytest.mark.parametrize("k, n, level", [(-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)])
def test_wilson_interval_rejects_bad_input(k, n, level):
    with pytest.raises(InterlayerError):
        proportion_ci(k, n, level)


def test_score_rates_intervals_and_json():
    records = [QARecord("q1", ("Paris",)), QARecord("q2", ("Rome",)), QARecord("q3", ("Bern",)),
               QARecord("q4", ("Oslo",))]
    predictions = ["Paris\nand more", "the city of Rome", "Zurich", "\nOslo."]
    result = score("gold", "open_book", predictions, records)
    assert isinstance(result, MethodScore)
    assert (result.method, result.setting, result.n) == ("gold", "open_book", 4)
    assert result.exact_match == 0.5  # Paris, Oslo
    assert result.contained == 0.75  # and Rome
    assert result.exact_match_ci == proportion_ci(2, 4)
    assert result.contained_ci == proportion_ci(3, 4)
    data = result.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["exact_match_ci"] == list(proportion_ci(2, 4)) and isinstance(data["contained_ci"], list)
    nan = MethodScore("m", "closed_book", 0, math.nan, (math.nan, math.nan), math.nan, (math.nan, math.nan))
    assert nan.to_json()["exact_match"] is None and nan.to_json()["contained_ci"] == [None, None]


def test_score_rejects_bad_input():
    records = [QARecord("q", ("a",))]
    with pytest.raises(InterlayerError, match=r"unknown setting 'rag'.*'closed_book', 'open_book'"):
        score("m", "rag", ["a"], records)
    with pytest.raises(InterlayerError, match="2 predictions for 1 records"):
        score("m", "closed_book", ["a", "b"], records)
    with pytest.raises(InterlayerError, match="nothing to score"):
        score("m", "closed_book", [], [])
