"""`r1-megatron eval` end to end on a tiny HF model: results and samples on disk, the same numbers from `--samples`,
a kill -9 in the middle then a rerun giving an uninterrupted run's results, and bad input refused in one line."""
import json
import signal
import sys
import time

import pytest

from r1_megatron.cli import main
from tests.evaluation.eval_fixtures import eval_args, results_of, samples_of, write_benchmark
from tests.models.hf_fixtures import qwen2_chat_dir
from tests.parallel.launch import ProcessGroup, run_to_end, worker_env


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return qwen2_chat_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench"), questions=6)


@pytest.fixture(scope="module")
def finished(model, bench, tmp_path_factory):
    """One uninterrupted evaluation (a subprocess: the command tears its process group down)."""
    out = tmp_path_factory.mktemp("finished") / "eval"
    stdout, _ = run_to_end([sys.executable, "-m", "r1_megatron", *eval_args(model, bench, out)], timeout=300)
    return out, stdout


def test_an_evaluation_writes_every_sample_and_every_number(finished):
    out, stdout = finished
    samples = samples_of(out)
    assert [(r["question"], r["sample"]) for r in samples] == [(q, j) for q in range(6) for j in range(4)]
    r = results_of(out)["sums"]
    assert (r["questions"], r["samples"], r["k"]) == (6, 24, 4)
    assert {"pass@1", "pass@2", "pass@4", "cons@4", "format_rate", "truncated_frac"} <= set(r)
    assert r["pass@1"] == pytest.approx(sum(s["correct"] for s in samples) / 24)
    assert r["response_length/mean"] == pytest.approx(sum(len(s["token_ids"]) for s in samples) / 24)
    assert all(s["prompt"].endswith("<|im_start|>assistant\n<think>\n") for s in samples)  # R1's response start
    assert "Please reason step by step" in samples[0]["prompt"]
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["sampling"]["temperature"] == 0.6 and document["settings"]["sampling"]["top_p"] == 0.95
    assert document["throughput"]["questions"] == 6 and document["throughput"]["generated_tokens"] > 0
    assert "| sums | 6 | 4 |" in stdout


def test_the_same_numbers_from_the_saved_samples_with_no_model(finished, tmp_path):
    out, _ = finished
    assert main(["eval", "--samples", str(out / "samples.jsonl"), "--out", str(tmp_path), "rewards.num_workers=1"]) == 0
    assert results_of(tmp_path) == results_of(out)
    copy = tmp_path / "copy"  # re-scored in place: results.json replaced, the evaluation's throughput kept
    copy.mkdir()
    for name in ("samples.jsonl", "results.json"):
        (copy / name).write_text((out / name).read_text())
    assert main(["eval", "--samples", str(copy / "samples.jsonl"), "rewards.num_workers=1"]) == 0
    before, after = (json.loads((d / "results.json").read_text()) for d in (out, copy))
    assert after["results"] == before["results"] and after["throughput"] == before["throughput"]
    assert after["rescored_from"] == str(copy / "samples.jsonl")


def test_kill_9_in_the_middle_then_a_rerun_gives_the_uninterrupted_results(model, bench, finished, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "r1_megatron", *eval_args(model, bench, out, "engine.questions_per_round=1")]
    with ProcessGroup(cmd, worker_env(), capture=False) as proc:
        samples = out / "samples.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if samples.exists() and len(samples.read_text().splitlines()) >= 1 + 2 * 4:  # two questions written
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = samples_of(out)
    assert 8 <= len(kept) < 24, "the kill must land in the middle of the evaluation"
    assert not (out / "results.json").exists()
    run_to_end([sys.executable, "-m", "r1_megatron", *eval_args(model, bench, out)])
    assert samples_of(out) == samples_of(finished[0])
    assert results_of(out) == results_of(finished[0])
    assert json.loads((out / "results.json").read_text())["throughput"]["questions"] < 6  # only the rest ran


def test_a_rerun_with_other_settings_is_refused(finished, model, bench, capsys):
    out, _ = finished
    assert main(eval_args(model, bench, out, "sampling.temperature=1.0")) == 2
    err = capsys.readouterr().err.strip()
    assert "written with other settings (settings.sampling.temperature: 0.6 in the file, 1.0 now)" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("case", ["missing_field", "unknown_scorer", "k_below_1", "no_checkpoint", "no_benchmark",
                                  "no_model"])
def test_bad_input_is_one_line_naming_the_file_line_or_key(case, model, tmp_path, capsys):
    bench = write_benchmark(tmp_path / "b", questions=3)
    args = eval_args(model, bench, tmp_path / "out")
    if case == "missing_field":
        lines = (tmp_path / "b" / "sums.jsonl").read_text().splitlines()
        lines[1] = json.dumps({"key": "s1", "problem": "What is 1 + 3?"})
        (tmp_path / "b" / "sums.jsonl").write_text("\n".join(lines) + "\n")
        want = "sums.jsonl:2: field 'answer': missing"
    elif case == "unknown_scorer":
        bench.write_text(bench.read_text().replace("scorer: math", "scorer: mathh"))
        want = "sums.yaml:4: benchmarks.sums.scorer: unknown scorer 'mathh'"
    elif case == "k_below_1":
        args.append("sampling.k=0")
        want = "sampling.k must be an integer >= 1"
    elif case == "no_checkpoint":
        args = ["eval", "--ckpt", str(tmp_path / "no_such_run")]
        want = f"{tmp_path / 'no_such_run'}: no complete checkpoint"
    elif case == "no_benchmark":
        args += ["--benchmarks", "nope"]
        want = "nope"
    else:
        args = ["eval"]
        want = "set --model HF_DIR or --ckpt RUN_DIR"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert want in err and len(err.splitlines()) == 1, err
    assert err.startswith("r1-megatron eval: error:")


def test_greedy_decoding_gives_transformers_greedy_tokens(model, bench, tmp_path):
    """sampling.greedy=true: one sample per question (pass@1 is greedy accuracy), each transformers' greedy
    continuation of the very prompt tokens the evaluation fed."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "greedy"
    run_to_end([sys.executable, "-m", "r1_megatron", *eval_args(model, bench, out, "sampling.greedy=true")])
    samples = samples_of(out)
    assert [s["sample"] for s in samples] == [0] * 6 and results_of(out)["sums"]["k"] == 1
    from r1_megatron.tokenizer import load_tokenizer

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(model)
    for s in samples:
        prompt = torch.tensor([tokenizer.encode(s["prompt"])])
        with torch.no_grad():
            want = hf.generate(prompt, do_sample=False, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)[0, prompt.shape[1]:].tolist()
        assert s["token_ids"] == want, s["question"]


def test_a_training_checkpoint_evaluates_as_its_hf_export(bench, tmp_path):
    """--ckpt RUN_DIR loads the run's latest checkpoint (model config, dtype, tokenizer as it recorded them) and
    gives the samples and numbers of --model RUN_DIR/hf, the same weights exported."""
    run = tmp_path / "sft"
    run_to_end([sys.executable, "-m", "r1_megatron", "train", "sft", f"run_dir={run}", "training.steps=2",
                "optimizer.warmup_steps=0", "evaluation.every_steps=0", "logging.progress=false", "logging.tensorboard=false"])
    from_ckpt, from_hf = tmp_path / "ckpt_eval", tmp_path / "hf_eval"
    run_to_end([sys.executable, "-m", "r1_megatron", *eval_args(run / "hf", bench, from_hf)])
    args = eval_args(run / "hf", bench, from_ckpt)
    args[1:3] = ["--ckpt", str(run)]
    run_to_end([sys.executable, "-m", "r1_megatron", *args])
    assert samples_of(from_ckpt) == samples_of(from_hf) and results_of(from_ckpt) == results_of(from_hf)
    settings = json.loads((from_ckpt / "results.json").read_text())["settings"]["model"]
    assert settings["step"] == 2 and settings["checkpoint"].endswith("step_00000002")


def test_overrides_may_come_between_the_flags(capsys):
    assert main(["eval", "benchmarks.limit=1", "--model", "/m", "sampling.k=2", "--print-config", "seed=5"]) == 0
    text = capsys.readouterr().out
    assert "limit: 1" in text and "k: 2" in text and "seed: 5" in text and "path: /m" in text
    with pytest.raises(SystemExit):  # an unknown flag is still argparse's error
        main(["eval", "--modle", "/m", "sampling.k=2"])
    assert "unrecognized arguments: --modle" in capsys.readouterr().err
