"""eval/samples.jsonl keeps every finished question through a kill: a torn last line and the samples of a question
with fewer than k samples are dropped on resume, finished questions are kept, other settings are refused."""
import json

import pytest

from r1_megatron.evaluation.sample_store import SampleStore, SampleStoreError, read_samples

HEADER = {"settings": {"seed": 0, "sampling": {"k": 2}}, "benchmarks": {"b": {"scorer": "math", "k": 2}}}


def _records(question, k=2):
    return [{"benchmark": "b", "question": question, "sample": j, "text": f"q{question}s{j}"} for j in range(k)]


def test_a_new_store_starts_with_its_header_and_appends_durably(tmp_path):
    path = tmp_path / "eval" / "samples.jsonl"
    with SampleStore(path, HEADER, {"b": 2}) as store:
        store.append(_records(0))
        assert store.done() == {("b", 0)}
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"header": HEADER} and len(lines) == 3
    assert read_samples(path) == (HEADER, _records(0))


def test_resume_drops_a_torn_line_and_unfinished_questions_and_keeps_the_rest(tmp_path):
    path = tmp_path / "samples.jsonl"
    with SampleStore(path, HEADER, {"b": 2}) as store:
        store.append(_records(0) + _records(1))
    with open(path, "a") as f:  # question 2: one of its two samples, then a write cut short by a kill
        f.write(json.dumps(_records(2)[0]) + "\n" + json.dumps(_records(2)[1])[:17])
    with SampleStore(path, HEADER, {"b": 2}) as store:
        assert store.done() == {("b", 0), ("b", 1)}
        assert store.records == _records(0) + _records(1)
        store.append(_records(2))
    header, records = read_samples(path)
    assert header == HEADER and records == _records(0) + _records(1) + _records(2)  # no duplicate of question 2


def test_other_settings_are_refused_naming_the_first_difference(tmp_path):
    path = tmp_path / "samples.jsonl"
    SampleStore(path, HEADER, {"b": 2}).close()
    other = json.loads(json.dumps(HEADER))
    other["settings"]["sampling"]["k"] = 4
    with pytest.raises(SampleStoreError, match=r"settings\.sampling\.k: 2 in the file, 4 now"):
        SampleStore(path, other, {"b": 4})


def test_a_malformed_line_in_the_middle_names_its_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"header": HEADER}) + "\n{not json\n" + json.dumps(_records(0)[0]) + "\n")
    with pytest.raises(SampleStoreError, match=r"samples\.jsonl:2: not a JSON line"):
        read_samples(path)


def test_a_file_without_a_header_is_not_resumed(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(_records(0)[0]) + "\n")
    with pytest.raises(SampleStoreError, match="no header line"):
        SampleStore(path, HEADER, {"b": 2})
