"""`r1-megatron eval --samples FILE` re-scores saved samples with no model and gives hand-worked pass@1, pass@k and
cons@k: ties, samples without an answer, answers equal only under math-verify (\\frac{1}{2} and 0.5), and a sample
whose scoring times out (wrong, counted, reported; the run does not hang)."""
import json

import pytest

from r1_megatron.cli import main

HEADER = {"settings": {"model": {"hf": "hand-written"}, "seed": 0},
          "benchmarks": {"hand": {"scorer": "math", "k": 4, "pass_ks": [1, 2, 4], "cons_k": 4, "format": None}}}
# question -> (reference answer, the 4 completions); the "correct" flags stored are wrong on purpose: --samples
# scores the texts again
QUESTIONS = {
    # correct 1,1,0,0; votes {1/2, 0.5}: 2 (one class under math-verify), {3}: 2, a tie won by the class seen
    # first -> right (string equality would give 1/2: 1, 0.5: 1, 3: 2 -> wrong)
    0: ("0.5", ["\\boxed{\\frac{1}{2}}", "so \\boxed{0.5}", "\\boxed{3}", "\\boxed{3}"]),
    # correct 0,1,0,0; the last sample has no answer and does not vote: {5}: 2, {7}: 1 -> wrong
    1: ("7", ["\\boxed{5}", "\\boxed{7}", "\\boxed{5}", "I do not know"]),
    # correct 0,1,1,0; {3}: 2 (first at sample 0), {2}: 2 (first at sample 1): the tie goes to 3 -> wrong
    2: ("2", ["\\boxed{3}", "\\boxed{2}", "\\boxed{2}", "\\boxed{3}"]),
}
# pass@1 = mean(2/4, 1/4, 2/4); pass@2 = mean(1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2), 1 - C(2,2)/C(4,2))
PASS_1, PASS_2, PASS_4, CONS_4 = (0.5 + 0.25 + 0.5) / 3, (5 / 6 + 3 / 6 + 5 / 6) / 3, 1.0, 1 / 3


def _record(question, sample, reference, text, benchmark="hand", scorer="math", finish="stop"):
    return {"benchmark": benchmark, "question": question, "id": f"q{question}", "sample": sample, "prompt": "p",
            "text": text, "token_ids": list(range(sample + 1)), "finish_reason": finish, "rewards": {},
            "correct": True, "answer": None, "failure": None, "error": None,
            "reference": {"answer": reference, "tests": None}, "scorer": scorer}


def _write(path, header, records):
    lines = ([json.dumps({"header": header})] if header else []) + [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")


def _hand_records():
    return [_record(q, j, ref, text) for q, (ref, texts) in QUESTIONS.items() for j, text in enumerate(texts)]


def test_hand_worked_pass_and_cons_from_saved_samples(tmp_path, capsys):
    samples = tmp_path / "eval" / "samples.jsonl"
    samples.parent.mkdir()
    _write(samples, HEADER, _hand_records())
    assert main(["eval", "--samples", str(samples), "rewards.num_workers=1"]) == 0
    document = json.loads((tmp_path / "eval" / "results.json").read_text())
    r = document["results"]["hand"]
    assert r["pass@1"] == pytest.approx(PASS_1) and r["pass@2"] == pytest.approx(PASS_2)
    assert r["pass@4"] == pytest.approx(PASS_4) and r["cons@4"] == pytest.approx(CONS_4)
    assert (r["questions"], r["samples"], r["k"]) == (3, 12, 4)
    assert r["response_length/mean"] == pytest.approx(2.5) and r["response_length/max"] == 4
    assert r["truncated_frac"] == 0.0 and r["failures"] == {"timeouts": 0, "crashes": 0, "errors": 0}
    assert document["rescored_from"] == str(samples) and document["settings"] == HEADER["settings"]
    table = capsys.readouterr().out
    assert "| hand | 3 | 4 | 41.7 | 72.2 | 100.0 | 33.3 |" in table


def test_without_a_header_k_comes_from_the_file_and_cons_uses_every_sample(tmp_path):
    samples = tmp_path / "samples.jsonl"
    _write(samples, None, _hand_records())
    assert main(["eval", "--samples", str(samples), "--out", str(tmp_path / "out"), "rewards.num_workers=1"]) == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["hand"]
    assert r["pass@1"] == pytest.approx(PASS_1) and r["pass@4"] == pytest.approx(PASS_4)
    assert r["cons@4"] == pytest.approx(CONS_4) and "pass@2" not in r


def test_a_sample_whose_scoring_times_out_is_wrong_and_counted(tmp_path):
    header = {"settings": {}, "benchmarks": {"code": {"scorer": "code", "k": 2, "pass_ks": [1], "cons_k": None,
                                                      "format": None}}}
    tests = [{"input": "2\n", "output": "4\n"}]
    ok = "```python\nprint(int(input()) * 2)\n```"
    hang = "```python\nwhile True:\n    pass\n```"
    records = [dict(_record(0, j, None, text, benchmark="code", scorer="code"),
                    reference={"answer": None, "tests": tests}) for j, text in enumerate([ok, hang])]
    samples = tmp_path / "samples.jsonl"
    _write(samples, header, records)
    assert main(["eval", "--samples", str(samples), "rewards.num_workers=1", "rewards.timeout_s=1.5"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())["results"]["code"]
    assert r["pass@1"] == 0.5 and r["failures"]["timeouts"] == 1 and "cons@2" not in r


def test_bad_samples_files_fail_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["eval", "--samples", str(missing)]) == 2
    assert f"{missing}: no such samples file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    records = _hand_records()
    del records[3]["text"]
    _write(bad, HEADER, records)
    assert main(["eval", "--samples", str(bad), "rewards.num_workers=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl: sample 4" in err and "field 'text': missing" in err and len(err.splitlines()) == 1
