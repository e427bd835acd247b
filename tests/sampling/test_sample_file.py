"""OUT/samples.jsonl + OUT/ledger.jsonl: durable appends, resume after a kill at any point between the writes,
and other settings refused naming the first differing key."""
import json

import pytest

from r1_megatron.evaluation.sample_store import SampleStoreError
from r1_megatron.sampling.sample_file import SampleFile

HEADER = {"settings": {"seed": 0, "sampling": {"k": 2, "temperature": 0.6}}}


def record(prompt, j):
    return {"messages": [{"role": "user", "content": f"q{prompt}"},
                         {"role": "assistant", "reasoning_content": "r 中文", "content": f"a{j}"}],
            "provenance": {"prompt_index": prompt, "sample": j}}


def finished(prompt, kept):
    return {"prompt": prompt, "drawn": 2, "kept": kept}, [record(prompt, j) for j in range(kept)]


def write(out, prompts):
    f = SampleFile(out, HEADER)
    f.append([finished(p, kept) for p, kept in prompts])
    f.close()


def test_appends_then_a_reopen_resumes_after_the_last_prompt(tmp_path):
    write(tmp_path, [(0, 2), (1, 0), (2, 1)])
    lines = (tmp_path / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [record(0, 0), record(0, 1), record(2, 0)]
    assert "中文" in lines[0]  # readable text, not \u escapes
    f = SampleFile(tmp_path, HEADER)
    assert f.done == 3 and f.records == [record(0, 0), record(0, 1), record(2, 0)]
    with pytest.raises(ValueError, match="prompt 5 finished before prompt 3"):
        f.append([finished(5, 1)])
    f.close()


def test_a_kill_between_or_inside_the_writes_loses_only_the_unfinished_prompts(tmp_path):
    write(tmp_path, [(0, 2), (1, 1)])
    whole = {name: (tmp_path / name).read_bytes() for name in ("samples.jsonl", "ledger.jsonl")}
    # prompt 2's records reached the disk (one torn), its ledger line only partly
    with open(tmp_path / "samples.jsonl", "a") as f:
        f.write(json.dumps(record(2, 0)) + "\n" + json.dumps(record(2, 1))[:30])
    with open(tmp_path / "ledger.jsonl", "a") as f:
        f.write('{"prompt": 2, "dr')
    f = SampleFile(tmp_path, HEADER)
    assert f.done == 2 and len(f.records) == 3
    f.close()
    assert {name: (tmp_path / name).read_bytes() for name in whole} == whole


def test_other_settings_or_foreign_files_are_refused(tmp_path):
    write(tmp_path, [(0, 1)])
    other = {"settings": {"seed": 0, "sampling": {"k": 4, "temperature": 0.6}}}
    with pytest.raises(SampleStoreError, match=r"other settings \(settings.sampling.k: 2 in the file, 4 now\)"):
        SampleFile(tmp_path, other)
    (tmp_path / "samples.jsonl").write_text("")
    with pytest.raises(SampleStoreError, match="0 records, the ledger counts 1"):
        SampleFile(tmp_path, HEADER)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "samples.jsonl").write_text("{}\n")
    with pytest.raises(SampleStoreError, match="exists without ledger.jsonl"):
        SampleFile(alone, HEADER)
