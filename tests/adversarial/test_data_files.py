"""Hostile or broken data files for GRPO prompts and SFT: each bad input, the one-line error it gives (file, true
line, field) under on_error=raise, and under on_error=skip that exactly that record is counted and all the
others are kept. Before the fix these were read silently (stringified lists, NaN answers, the last of two
duplicate keys), reported on the wrong line, dropped every following line, or raised without a location."""
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1_megatron.data import DataError, PromptDataConfig, PromptDataset, build_arithmetic_tokenizer
from r1_megatron.data.sft_dataset import SFTDataConfig, load_sft_datasets
from r1_megatron.tokenizer import load_tokenizer
from tests.models.hf_fixtures import chat_tokenizer


def good_line(i: int) -> bytes:
    return json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}).encode() + b"\n"


def write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(lines))
    return str(path)


def load(path, on_error="raise", **kw) -> PromptDataset:
    return PromptDataset(PromptDataConfig(paths=(path,), on_error=on_error, shuffle=False, **kw))


def assert_raises_then_skips(path, n_lines, bad_line, message, kind, **kw):
    """Strict: exactly ``path:bad_line: message``. Skip: that line counted under ``kind``, all others kept."""
    with pytest.raises(DataError) as err:
        load(path, **kw)
    assert str(err.value) == f"{path}:{bad_line}: {message}"
    assert (err.value.path, err.value.line) == (path, bad_line)
    ds = load(path, on_error="skip", **kw)
    assert dict(ds.stats) == {"kept": n_lines - 1, f"skipped_{kind}": 1}
    assert f"{path}:{bad_line}" not in {s.source for s in ds.samples}
    assert ds.notes() == [f"data: skipped 1 bad records (data.on_error=skip): 1 {kind.replace('_', ' ')}"]


# ---- bytes and JSON syntax: the shared reader ----------------------------------------------------------------------

@pytest.mark.parametrize("bad_line, n_lines", [(10, 49), (250, 299)])  # the files: reported as 1 and 145
def test_non_utf8_byte_is_reported_on_its_line_and_skips_only_it(tmp_path, bad_line, n_lines):
    lines = [good_line(i) for i in range(n_lines)]
    lines[bad_line - 1] = b'{"question": "caf\xe9", "answer": "1"}\n'  # Latin-1 e-acute
    path = write_lines(tmp_path / "u.jsonl", lines)
    assert_raises_then_skips(path, n_lines, bad_line, "not valid UTF-8 at byte 18 of the line (invalid continuation "
                                                      "byte)", "malformed")


def test_deeply_nested_json_is_a_located_error(tmp_path):
    deep = b'{"question": "q", "answer": "1", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    path = write_lines(tmp_path / "deep.jsonl", [good_line(0), deep, good_line(2)])
    assert_raises_then_skips(path, 3, 2, "JSON nested too deeply to read", "malformed")


def test_byte_order_mark_and_escaped_surrogate_pairs_are_fine(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [b"\xef\xbb\xbf" + good_line(0),
                                               b'{"question": "smile \\ud83d\\ude00", "answer": "1"}\n'])
    assert [s.question for s in load(path).samples] == ["0+1=", "smile \U0001F600"]


@pytest.mark.parametrize("record, message", [
    (b'{"question": "q", "answer": "1", "answer": "2"}',
     "field 'answer': the key appears twice in one JSON object (which value is meant?)"),
    (b'{"question": "q\\ud800", "answer": "1"}',
     "field 'question': holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text"),
    (b'{"question": "q", "answer": "\\udfff1"}',
     "field 'answer': holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text"),
    (b'{"question": "q", "answer": "1", "meta": [{"note": "\\uDBFF"}]}',  # any field, at any depth
     "field 'meta': holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text"),
])
def test_json_the_parser_would_accept_silently(tmp_path, record, message):
    path = write_lines(tmp_path / "j.jsonl", [good_line(0), record + b"\n", good_line(2)])
    assert_raises_then_skips(path, 3, 2, message, "malformed")


def test_lone_surrogate_stops_before_the_tokenizer(tmp_path):
    # the tokenizer raised "TypeError: TextInputSequence must be str", naming no record
    tokenizer = load_tokenizer(build_arithmetic_tokenizer(tmp_path / "tok"))
    path = write_lines(tmp_path / "s.jsonl", [good_line(0), b'{"question": "1+\\ud800", "answer": "1"}\n'])
    with pytest.raises(DataError, match=r"s.jsonl:2: field 'question': holds a lone surrogate"):
        PromptDataset(PromptDataConfig(paths=(path,), template="raw"), tokenizer)


# ---- field values: question, answer, tests -------------------------------------------------------------------------

@pytest.mark.parametrize("record, message", [
    ({"question": ["a", "b"], "answer": "1"}, "field 'question': expected a string, got list"),
    ({"question": {"text": "a"}, "answer": "1"}, "field 'question': expected a string, got dict"),
    ({"question": True, "answer": "1"}, "field 'question': expected a string, got bool"),
    ({"question": "", "answer": "1"}, "field 'question': empty (or only whitespace)"),
    ({"question": " \n\t", "answer": "1"}, "field 'question': empty (or only whitespace)"),
    ({"question": "q", "answer": [1, 2]}, "field 'answer': expected a string, got list"),
    ({"question": "q", "answer": {"value": 1}}, "field 'answer': expected a string, got dict"),
    ({"question": "q", "answer": math.nan}, "field 'answer': expected a string or a finite number, got nan"),
    ({"question": "q", "answer": math.inf}, "field 'answer': expected a string or a finite number, got inf"),
    ({"question": "q", "answer": -math.inf}, "field 'answer': expected a string or a finite number, got -inf"),
])
def test_question_and_answer_of_the_wrong_kind(tmp_path, record, message):
    path = write_lines(tmp_path / "f.jsonl", [good_line(0), good_line(1), json.dumps(record).encode() + b"\n"])
    assert_raises_then_skips(path, 3, 3, message, "bad_field")


def test_numbers_are_still_answers(tmp_path):
    path = write_lines(tmp_path / "n.jsonl", [json.dumps({"question": "q", "answer": a}).encode() + b"\n"
                                              for a in (72, 0.5, -3)])
    assert [s.answer for s in load(path).samples] == ["72", "0.5", "-3"]


@pytest.mark.parametrize("tests, message", [
    ({"cases": [1]}, "code tests: expected a non-empty list or an inputs/outputs dict, got dict"),
    ([], "code tests: expected a non-empty list or an inputs/outputs dict, got list"),
    (7, "code tests: expected a non-empty list or an inputs/outputs dict, got int"),
    ([1, 2], "code tests: item 0 is neither an assert string nor an input/output dict: 1"),
    ("assert f(1) == 2", "code tests: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ({"inputs": ["1"], "outputs": ["1", "2"]}, "code tests: 1 inputs but 2 outputs"),
])
def test_code_tests_that_are_not_a_list_of_cases(tmp_path, tests, message):
    good = {"question": "write f", "tests": ["assert f(1) == 2"]}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(r).encode() + b"\n"
                                              for r in (good, {"question": "write g", "tests": tests}, good)])
    assert_raises_then_skips(path, 3, 2, f"field 'tests': {message}", "bad_field", answer_field=None,
                             tests_field="tests")


def test_code_tests_whose_inputs_have_no_length(tmp_path):
    # parse_test_cases raises TypeError (len of an int) for this one; it is a data error like the others
    path = write_lines(tmp_path / "c.jsonl", [b'{"question": "g", "tests": {"inputs": 5, "outputs": [1]}}\n'])
    with pytest.raises(DataError, match=r"^.*c.jsonl:1: field 'tests': "):
        load(path, answer_field=None, tests_field="tests")


# ---- Parquet and CSV -----------------------------------------------------------------------------------------------

def test_parquet_nan_answer_as_pandas_writes_a_missing_value(tmp_path):
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": [1.0, math.nan, 3.0]}), path)
    assert_raises_then_skips(path, 3, 2, "field 'answer': expected a string or a finite number, got nan", "bad_field")


def test_csv_non_utf8_row_is_skipped_alone(tmp_path):
    path = write_lines(tmp_path / "u.csv", [b"question,answer\n", b"a,1\n", b"caf\xe9,2\n", b"c,3\n", b"d,4\n"])
    with pytest.raises(DataError, match=r"^.*u.csv:3: not valid UTF-8$"):
        load(path)
    assert dict(load(path, on_error="skip").stats) == {"kept": 3, "skipped_malformed": 1}


# ---- the file itself -----------------------------------------------------------------------------------------------

def test_a_directory_is_not_a_data_file(tmp_path):
    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(DataError, match=r"^.*train.jsonl: is a directory, expected a data file$"):
        load(str(tmp_path / "train.jsonl"), on_error="skip")


def test_jsonl_named_parquet(tmp_path):
    path = write_lines(tmp_path / "train.parquet", [good_line(0), good_line(1)])
    with pytest.raises(DataError) as err:
        load(path, on_error="skip")
    assert str(err.value) == (f"{path}: not a Parquet file (it does not start and end with the bytes 'PAR1'); JSON "
                              f"lines are read from .jsonl or .json files, CSV from .csv")
    assert err.value.line is None


# ---- SFT reads the same files the same way -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_tok")
    chat_tokenizer().save_pretrained(path)
    return load_tokenizer(path)


SFT_GOOD = json.dumps({"prompt": "What is 1 + 2?", "response": "The sum is 3."}).encode() + b"\n"


@pytest.mark.parametrize("bad, message, kind", [
    (b'{"prompt": "What is 1 + 2?", "response": "\xff"}', "not valid UTF-8 at byte 43 of the line (invalid start "
                                                          "byte)", "malformed"),
    (b'{"prompt": ["a"], "response": "b"}', "field 'prompt': expected a string, got list", "bad_field"),
    (b'{"prompt": "a", "response": NaN}', "field 'response': expected a string or a finite number, got nan",
     "bad_field"),
    (b'{"prompt": "a", "response": "b", "prompt": "c"}',
     "field 'prompt': the key appears twice in one JSON object (which value is meant?)", "malformed"),
    (b'{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}',
     "field 'messages': holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text",
     "malformed"),
    (b'{"prompt": "a", "response": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "JSON nested too deeply to read",
     "malformed"),
])
def test_sft_bad_line_named_and_skipped_alone(tmp_path, chat_tok, bad, message, kind):
    path = write_lines(tmp_path / "train.jsonl", [SFT_GOOD, SFT_GOOD, bad + b"\n", SFT_GOOD])
    with pytest.raises(DataError) as err:
        load_sft_datasets(SFTDataConfig(paths=(path,)), chat_tok)
    assert str(err.value) == f"{path}:3: {message}"
    ds = load_sft_datasets(SFTDataConfig(paths=(path,), on_error="skip"), chat_tok).train
    assert (len(ds), ds.stats[f"skipped_{kind}"]) == (3, 1)
    assert [e.source.rsplit(":", 1)[1] for e in ds.examples] == ["1", "2", "4"]
