"""`r1-megatron sample` end to end on a tiny random Qwen2 (the real engine and reward workers): SFT-ready records
with provenance, the filter table, `train sft` reading the output, a kill -9 then a rerun ending byte-identical to
an uninterrupted run, the same file at data-parallel size 2, and a rerun with other settings refused."""
import json
import shutil
import signal
import sys
import time

import pytest

from r1_megatron.cli import main
from r1_megatron.sampling.selection import FILTERS
from tests.models.hf_fixtures import qwen2_chat_dir
from tests.parallel.launch import ProcessGroup, run_to_end, worker_env

PROMPTS = 6
# a random model's responses: the rewards test, the language and paragraph filters and the cap all have work
SETTINGS = ("data.template=chat", "sampling.max_new_tokens=24", "model.dtype=fp32", "rewards.num_workers=1",
            "rewards.weights={math_accuracy: 1.0, language_consistency: 0.5}",
            "keep.require={language_consistency: 0.9}", "filters.language.min_consistency=0.97",
            "filters.max_paragraph_chars=30", "keep.max_per_prompt=2", "progress=false")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    lines = [json.dumps({"question": f"What is {i} + {i + 3}?", "answer": str(2 * i + 3)}) for i in range(PROMPTS)]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return qwen2_chat_dir(root / "model"), root / "prompts.jsonl"


def command(inputs, out, *extra):
    model, prompts = inputs
    return ["sample", "--model", str(model), "--data", str(prompts), "--out", str(out), *SETTINGS, *extra]


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    stdout, _ = run_to_end([sys.executable, "-m", "r1_megatron", *command(inputs, out)], timeout=300)
    return out, stdout


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_kept_samples_are_sft_records_with_provenance_and_the_table_counts_every_sample(inputs, finished):
    out, stdout = finished
    records, summary = lines(out / "samples.jsonl"), json.loads((out / "summary.json").read_text())
    assert (summary["prompts"], summary["drawn"]) == (PROMPTS, PROMPTS * 4)
    assert summary["kept"] == len(records) > 0
    assert summary["drawn"] == summary["kept"] + sum(summary["rejected"].values())
    assert list(summary["rejected"]) == list(FILTERS)
    assert summary["rejected"]["rewards"] > 0 and summary["rejected"]["long_paragraph"] > 0
    assert summary["failed"]["language"] >= summary["rejected"]["language"]
    for r in records:
        user, assistant = r["messages"]
        p = r["provenance"]
        assert user == {"role": "user", "content": f"What is {p['prompt_index']} + {p['prompt_index'] + 3}?"}
        assert assistant["role"] == "assistant" and set(assistant) == {"role", "reasoning_content", "content"}
        assert p["model"] == str(inputs[0].resolve()) and p["step"] is None and p["run_seed"] == 0
        assert p["prompt_id"] == f"{inputs[1]}:{p['prompt_index'] + 1}"
        assert p["rewards"]["language_consistency"] >= 0.9 and set(p["rewards"]) == {"math_accuracy",
                                                                                      "language_consistency"}
        assert list(p["filters"]) == list(FILTERS) and all(f["pass"] for f in p["filters"].values())
        assert p["filters"]["long_paragraph"]["longest_chars"] <= 30
    per_prompt = [sum(r["provenance"]["prompt_index"] == i for r in records) for i in range(PROMPTS)]
    assert max(per_prompt) <= 2 and per_prompt == [t["kept"] for t in lines(out / "ledger.jsonl")[1:]]
    order = [(r["provenance"]["prompt_index"], r["provenance"]["sample"]) for r in records]
    assert order == sorted(order)
    assert f"| **kept** | {PROMPTS} prompts, {PROMPTS * 4} drawn | | {len(records)} |" in stdout


def test_train_sft_reads_the_output(inputs, finished):
    from r1_megatron.data.sft_dataset import load_sft_datasets
    from r1_megatron.run_config import load_run_config
    from r1_megatron.sft.config import SFTRunConfig
    from r1_megatron.tokenizer import load_tokenizer

    samples = finished[0] / "samples.jsonl"
    tokenizer = load_tokenizer(inputs[0])
    for template in ("chat", "r1_distill"):  # as `train sft data.paths=[OUT/samples.jsonl]` loads its data
        cfg = load_run_config(None, [f"data.paths=[{samples}]", f"data.template={template}",
                                     f"model.path={inputs[0]}", "model.preset=null",
                                     "data.synthetic=null"], cls=SFTRunConfig)
        data = load_sft_datasets(cfg.data.dataset_config(), tokenizer)
        held_out = len(data.validation) if data.validation is not None else 0  # the recipe's validation share
        assert len(data.train) + held_out == len(lines(samples)) and data.train.stats["rendered"] == len(lines(samples))


def test_kill_9_in_the_middle_then_a_rerun_ends_byte_identical(inputs, finished, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "r1_megatron", *command(inputs, out, "engine.questions_per_round=1")]
    with ProcessGroup(cmd, worker_env(), capture=False) as proc:
        ledger = out / "ledger.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= 1 + 2:  # two prompts finished
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished_prompts = len(ledger.read_text().splitlines()) - 1
    assert 2 <= finished_prompts < PROMPTS, "the kill must land in the middle of the run"
    assert not (out / "summary.json").exists()
    run_to_end([sys.executable, "-m", "r1_megatron", *command(inputs, out)])
    for name in ("samples.jsonl", "ledger.jsonl"):
        assert (out / name).read_bytes() == (finished[0] / name).read_bytes()
    counts = [{k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k not in ("throughput",
                                                                                                     "samples")}
              for d in (out, finished[0])]
    assert counts[0] == counts[1]


def test_data_parallel_ranks_write_the_same_file(inputs, finished, tmp_path):
    out = tmp_path / "out"
    run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                "r1_megatron", *command(inputs, out)], timeout=300)
    assert (out / "samples.jsonl").read_bytes() == (finished[0] / "samples.jsonl").read_bytes()


def test_a_rerun_with_other_settings_is_refused_naming_the_key(inputs, finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    before = (out / "samples.jsonl").read_bytes()
    assert main(command(inputs, out, "sampling.k=2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1-megatron sample: error: ") and "\n" not in err
    assert "written with other settings (settings.sampling.k: 4 in the file, 2 now)" in err
    assert (out / "samples.jsonl").read_bytes() == before


def test_kinds_route_rule_rewards_and_a_generative_judge_in_one_run(inputs, tmp_path):
    """Reasoning prompts scored by math_accuracy, general prompts by a generative judge (the tiny model itself, its
    verdicts unreadable: they score 0 and are counted), in one `sample` run: each kept record carries the rewards of
    its own kind only, and keep.require tests only those."""
    model, _ = inputs
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "kind": "reasoning"} for i in range(2)]
    rows += [{"question": f"Say hello to friend {i}.", "answer": "hello", "kind": "general"} for i in range(2)]
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    settings = ["data.template=chat", "data.kind_field=kind", "sampling.max_new_tokens=8", "sampling.k=2",
                "model.dtype=fp32", "rewards.num_workers=1", "progress=false",
                "rewards.weights={format: 1.0, agrees: 1.0}", "keep.require={agrees: 0.0}",
                f"rewards.models={{agrees: {{kind: judge, path: {model}, dtype: fp32, max_new_tokens: 4}}}}",
                "rewards.kinds={reasoning: [format], general: [agrees]}", "filters.language.min_consistency=null",
                "filters.max_paragraph_chars=null", "filters.dedup=none"]
    assert main(["sample", "--model", str(model), "--data", str(prompts), "--out", str(out), *settings]) == 0
    records = lines(out / "samples.jsonl")
    kinds = {r["kind"]: set(r["provenance"]["rewards"]) for r in records}
    assert kinds == {"reasoning": {"format"}, "general": {"agrees"}}, kinds
    assert len(records) == 8  # nothing filtered: the judge's minimum is 0 and format is not required
    assert all(r["provenance"]["rewards"]["agrees"] in (0.0, 1.0) for r in records if r["kind"] == "general")
