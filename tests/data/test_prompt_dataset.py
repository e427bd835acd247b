"""Prompt datasets: template bytes, field mapping, errors naming file/line/field, skips, filtering, resumption."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1_megatron.data import (DataError, PromptDataConfig, PromptDataset, PromptTemplate, build_arithmetic_tokenizer,
                              read_records, render_r1_zero)
from r1_megatron.tokenizer import load_tokenizer

# Copied by hand from the DeepSeek-R1 paper (v1) / docs r1_reference.md, "prompt" replaced by the question.
R1_ZERO_EXPECTED = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. User: What is 1+1?. Assistant:"
)


def write_jsonl(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return str(path)


def test_r1_zero_template_is_byte_exact():
    rendered = render_r1_zero("What is 1+1?")
    assert rendered.encode("utf-8") == R1_ZERO_EXPECTED.encode("utf-8")
    assert render_r1_zero("{question} $x$").endswith("User: {question} $x$. Assistant:")


def test_jsonl_with_custom_fields(tmp_path):
    lines = [{"problem": "1+1?", "solution": 2}, "", {"problem": "2+2?", "solution": "4"}]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    ds = PromptDataset(PromptDataConfig(paths=(path,), question_field="problem", answer_field="solution",
                                        shuffle=False))
    assert [(s.question, s.answer, s.source) for s in ds.samples] == [("1+1?", "2", f"{path}:1"),
                                                                      ("2+2?", "4", f"{path}:3")]
    assert ds.samples[0].prompt == render_r1_zero("1+1?")
    assert ds.samples[0].reward_sample() == {"answer": "2", "tests": None, "question": "1+1?", "kind": "default"}


def test_parquet_with_tests_field(tmp_path):
    path = str(tmp_path / "p.parquet")
    tests = [json.dumps({"inputs": ["1 2"], "outputs": ["3"]}), json.dumps(["assert f(1) == 2"])]
    pq.write_table(pa.table({"q": ["add", "f"], "a": ["", ""], "t": tests}), path)
    ds = PromptDataset(PromptDataConfig(paths=(path,), question_field="q", answer_field="a", tests_field="t",
                                        template=PromptTemplate.RAW, shuffle=False))
    assert [s.prompt for s in ds.samples] == ["add", "f"]
    assert ds.samples[1].tests == tests[1] and ds.samples[1].source == f"{path}:2"


def test_csv_rows_with_the_file_line_they_start_on(tmp_path):
    # a quoted cell spans lines 2-3, a blank line is skipped; values are strings, an empty cell is ""
    path = tmp_path / "p.csv"
    path.write_text('question,answer,note\n"two\nlines",1,\n\nplain,"2,5",x\n', encoding="utf-8")
    assert list(read_records(str(path))) == [(2, {"question": "two\nlines", "answer": "1", "note": ""}),
                                             (5, {"question": "plain", "answer": "2,5", "note": "x"})]
    ds = PromptDataset(PromptDataConfig(paths=(str(path),), template=PromptTemplate.RAW, shuffle=False))
    assert [(s.question, s.answer, s.source) for s in ds.samples] == [("two\nlines", "1", f"{path}:2"),
                                                                      ("plain", "2,5", f"{path}:5")]
    path.write_text('question,answer\n"a\nb",1\nc,2,extra\n')
    with pytest.raises(DataError, match=r"p.csv:4: 3 cells where the header has 2$"):
        PromptDataset(PromptDataConfig(paths=(str(path),)))
    path.write_text("question,question\na,b\n")
    with pytest.raises(DataError, match=r"p.csv:1: duplicate column names \['question'\]"):
        PromptDataset(PromptDataConfig(paths=(str(path),)))
    path.write_bytes(b"question,answer\nok,1\n\xff,2\n")
    with pytest.raises(DataError, match=r"p.csv:3: not valid UTF-8"):
        PromptDataset(PromptDataConfig(paths=(str(path),)))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "answer": "1"}, '{"question": "b", "answer": ',
                                                 {"question": "c", "answer": "3"}])
    with pytest.raises(DataError) as err:
        PromptDataset(PromptDataConfig(paths=(path,)))
    assert str(err.value).startswith(f"{path}:2: malformed JSON at column")
    assert (err.value.path, err.value.line) == (path, 2)
    not_object = write_jsonl(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"list.jsonl:1: expected a JSON object, got list"):
        PromptDataset(PromptDataConfig(paths=(not_object,)))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"},
                                              {"question": "c"}])
    with pytest.raises(DataError) as err:
        PromptDataset(PromptDataConfig(paths=(path,)))
    assert str(err.value) == f"{path}:3: field 'answer': missing (or null)"
    assert err.value.field == "answer"


def test_skip_mode_counts(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "a", "answer": "1"}, "{oops", {"answer": "2"},
                                              {"question": "d", "answer": None}, {"question": "e", "answer": "5"}])
    ds = PromptDataset(PromptDataConfig(paths=(path,), on_error="skip"))
    assert len(ds) == 2
    assert ds.stats == {"kept": 2, "skipped_malformed": 1, "skipped_missing_field": 2}


def test_long_prompts_are_filtered_and_counted(tmp_path):
    tokenizer = load_tokenizer(build_arithmetic_tokenizer(tmp_path / "tok"))
    path = write_jsonl(tmp_path / "l.jsonl", [{"question": "1+1=", "answer": "2"},
                                              {"question": "123456+1=", "answer": "123457"},
                                              {"question": "12+12=", "answer": "24"}])
    ds = PromptDataset(PromptDataConfig(paths=(path,), template="raw", max_prompt_tokens=6), tokenizer)
    assert sorted(s.question for s in ds.samples) == ["1+1=", "12+12="]
    assert ds.stats["filtered_too_long"] == 1
    assert ds.samples[0].prompt_ids == tuple(tokenizer.encode(ds.samples[0].prompt))
    with pytest.raises(ValueError, match="need a tokenizer"):
        PromptDataset(PromptDataConfig(paths=(path,), max_prompt_tokens=6))


def _dataset(tmp_path, seed):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(10)])
    return PromptDataset(PromptDataConfig(paths=(path,), seed=seed))


def test_shuffle_is_deterministic_and_epochs_differ(tmp_path):
    first = [s.question for s in _dataset(tmp_path, 7).next_batch(20)]
    assert first == [s.question for s in _dataset(tmp_path, 7).next_batch(20)]
    assert first != [s.question for s in _dataset(tmp_path, 8).next_batch(20)]
    assert sorted(first[:10]) == sorted(first[10:]) == sorted(f"q{i}" for i in range(10))
    assert first[:10] != first[10:]  # reshuffled each epoch


def test_resume_from_state_dict(tmp_path):
    ds = _dataset(tmp_path, 3)
    ds.next_batch(7)
    state = ds.state_dict()
    expected = [s.question for s in ds.next_batch(9)]
    resumed = _dataset(tmp_path, 3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert [s.question for s in resumed.next_batch(9)] == expected
    with pytest.raises(ValueError, match="seed 3"):
        _dataset(tmp_path, 4).load_state_dict(state)


def test_chat_template_prompts(tmp_path):
    tok_dir = build_arithmetic_tokenizer(tmp_path / "tok")
    config = json.loads(open(f"{tok_dir}/tokenizer_config.json").read())
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with open(f"{tok_dir}/tokenizer_config.json", "w") as f:
        json.dump(config, f)
    path = write_jsonl(tmp_path / "c.jsonl", [{"question": "12+3=", "answer": "15"}])
    ds = PromptDataset(PromptDataConfig(paths=(path,), template="chat"), load_tokenizer(tok_dir))
    assert ds.samples[0].prompt == "<bos>12+3="
    assert ds.samples[0].prompt_ids == (1, 5, 6, 14, 7, 15)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        PromptDataConfig(paths=("x.jsonl",), on_error="ignore")
    with pytest.raises(ValueError, match="'prose'"):
        PromptDataConfig(paths=("x.jsonl",), template="prose")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        PromptDataset(PromptDataConfig(paths=(str(tmp_path / "missing.jsonl"),)))
    with pytest.raises(ValueError, match="unknown prompt data format"):
        (tmp_path / "x.tsv").write_text("a\tb\n")
        PromptDataset(PromptDataConfig(paths=(str(tmp_path / "x.tsv"),)))
