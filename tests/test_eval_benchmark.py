"""benchmarks/bench_eval.py: the inputs both sides share (tokenizer, questions, our benchmark YAML, the lm-eval task)
are what the method says (our tokenizer loader and transformers' give the same prompt ids, EOS is outside the
model); the token count and same-work checks can fail; and the smoke comparison of both sides runs end to end
when lm-eval is installed (`pip install -e ".[bench]"`)."""
import dataclasses
import json
import math

import pytest

from tests.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_eval")


@pytest.fixture(scope="module")
def smoke(bench):
    return bench.settings_from(bench._parse(["--smoke"]))


def test_tokenizer_one_token_per_byte_and_eos_outside_the_model(bench, tmp_path):
    from transformers import AutoTokenizer

    from r1_megatron.tokenizer import load_tokenizer

    vocab = 300
    bench.write_tokenizer(tmp_path, vocab)
    hf, ours = AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(str(tmp_path))
    assert hf.eos_token_id == ours.eos_token_id == vocab and hf.pad_token_id == ours.pad_token_id == 0
    problem = "What is 12 + 34? \\boxed{} é"
    prompt = bench.render_prompt(problem)
    messages = [{"role": "user", "content": problem}]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == prompt
    ids = hf.encode(prompt, add_special_tokens=False)
    assert ids == ours.encode(prompt)
    assert ids.count(1) == 2 and len(ids) == len(prompt.replace(bench.TURN, "").encode()) + 2  # bytes + 2 turns
    assert max(ids) < vocab and hf.decode(ids) == prompt
    assert hf.decode([vocab - 1]) == f"<|fill{vocab - 1}|>"  # ids past the bytes still decode
    with pytest.raises(ValueError, match="model_vocab 200"):
        bench.write_tokenizer(tmp_path, 200)


def test_questions_are_deterministic_distinct_and_answered(bench, tmp_path):
    first = bench.write_questions(tmp_path / "a.jsonl", 20, seed=3)
    assert first == bench.write_questions(tmp_path / "b.jsonl", 20, seed=3)
    assert first != bench.write_questions(tmp_path / "c.jsonl", 20, seed=4)
    assert [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()] == first
    assert len({r["problem"] for r in first}) == 20 and len({r["id"] for r in first}) == 20
    for r in first:
        a, b = (int(x) for x in r["problem"].removeprefix("What is ").split("?")[0].split(" + "))
        assert r["answer"] == str(a + b) and r["problem"].endswith(bench.SUFFIX)
        assert r["prompt"] == bench.render_prompt(r["problem"])
    with pytest.raises(ValueError, match="8101 questions"):
        bench.write_questions(tmp_path / "d.jsonl", 8101, seed=0)


def test_both_sides_are_configured_alike(bench, smoke, tmp_path):
    import yaml

    questions = tmp_path / "q.jsonl"
    ours = bench.ours_benchmark_yaml(tmp_path / "bench.yaml", questions, smoke)
    assert yaml.safe_load((tmp_path / "bench.yaml").read_text()) == ours
    spec = ours["benchmarks"][bench.BENCHMARK]
    assert (spec["path"], spec["scorer"], spec["template"], spec["k"]) == (str(questions), "math", "chat", smoke.k)
    assert spec["fields"]["question"] == "problem" and spec["suffix"] == "" and spec["think_prefix"] is False
    task = bench.lm_eval_task_yaml(tmp_path / "tasks", questions, smoke)
    assert yaml.safe_load((tmp_path / "tasks" / f"{bench.BENCHMARK}.yaml").read_text()) == task
    assert task["repeats"] == smoke.k and task["doc_to_text"] == "{{prompt}}"
    assert task["dataset_kwargs"]["data_files"]["test"] == str(questions)
    assert task["generation_kwargs"] == {"do_sample": True, "temperature": smoke.temperature, "top_p": smoke.top_p,
                                         "top_k": 0, "max_gen_toks": smoke.max_new_tokens, "until": []}
    cmd = bench.ours_command(tmp_path / "hf", tmp_path / "bench.yaml", tmp_path / "out", smoke, ["x.y=1"])
    assert cmd[1:4] == ["-m", "r1_megatron", "eval"] and cmd[-1] == "x.y=1"
    assert f"sampling.k={smoke.k}" in cmd and f"sampling.max_new_tokens={smoke.max_new_tokens}" in cmd
    assert f"sampling.temperature={smoke.temperature}" in cmd and f"sampling.top_p={smoke.top_p}" in cmd


def test_count_generated_stops_at_the_first_eos(bench):
    assert bench.count_generated([[5, 6, 7], [5, 9, 9], [9, 0, 0]], eos_id=9) == 3 + 2 + 1
    assert bench.count_generated([], eos_id=9) == 0


def test_checks_catch_short_samples_and_other_prompts(bench, smoke):
    n = smoke.questions * smoke.k
    prompts = {"a": "p"}
    lm = {"generated_tokens": n * smoke.max_new_tokens, "samples": n, "samples_per_question": [smoke.k]}
    ours = {"available": True, "generated_tokens": n * smoke.max_new_tokens, "samples": n, "prompts": prompts}
    ok = bench.checks(lm, ours, smoke, prompts, prompts)
    assert all(ok[k] for k in ("lm_eval_tokens_ok", "lm_eval_k_ok", "lm_eval_prompts_ok", "ours_tokens_ok",
                               "prompts_match"))
    short = bench.checks(dict(lm, generated_tokens=n * smoke.max_new_tokens - 1, samples_per_question=[1, 2]),
                         dict(ours, samples=n - 1, prompts={"a": "q"}), smoke, prompts, {"a": "r"})
    assert not any(short[k] for k in ("lm_eval_tokens_ok", "lm_eval_k_ok", "lm_eval_prompts_ok", "ours_tokens_ok",
                                      "prompts_match"))
    missing = bench.checks(lm, {"available": False}, smoke, prompts, prompts)
    assert missing["ours_tokens_ok"] is None and missing["prompts_match"] is None
    assert bench.goal_verdict(None, "cpu")["met"] is None
    assert bench.goal_verdict({"generated_tokens_per_s": 1.6}, "cpu")["met"] is True
    assert bench.goal_verdict({"generated_tokens_per_s": 1.6}, "cuda")["met"] is False


def test_read_ours_takes_results_throughput_and_counts_sample_tokens(bench, tmp_path):
    throughput = {"questions_per_s": 2.0, "generated_tokens_per_s": 30.0, "wall_s": 1.5}
    (tmp_path / "results.json").write_text(json.dumps({"throughput": throughput, "seed": 0}))
    rows = [{"benchmark": "b", "question": q, "id": f"arith-{q}", "sample": i, "prompt": f"p{q}",
             "token_ids": [1] * (q + i + 1)} for q in range(2) for i in range(3)]
    header = json.dumps({"header": {"settings": {}, "benchmarks": {}}}) + "\n"
    (tmp_path / "samples.jsonl").write_text(header + "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    got = bench.read_ours(tmp_path)
    assert {k: got[k] for k in throughput} == throughput
    assert (got["questions"], got["samples"], got["generated_tokens"]) == (2, 6, (1 + 2 + 3) + (2 + 3 + 4))
    assert got["prompts"] == {"arith-0": "p0", "arith-1": "p1"}


def test_smoke_run_against_lm_eval(bench, smoke, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="the peer: pip install -e '.[bench]'")
    out = tmp_path / "eval.json"
    payload = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == payload
    assert "--smoke" in payload["command"] and payload["env"]["lm_eval"] == bench.LM_EVAL_VERSION
    assert payload["settings"] == dataclasses.asdict(smoke)
    lm = payload["lm_eval"]
    assert lm["r1_megatron_imported"] is False and lm["questions"] == smoke.questions
    assert lm["generate_kwargs"] == {"do_sample": True, "temperature": smoke.temperature, "top_p": smoke.top_p,
                                     "top_k": 0}
    for key in ("questions_per_s", "generated_tokens_per_s", "wall_s", "generate_s", "load_s", "process_wall_s"):
        assert math.isfinite(lm[key]) and lm[key] > 0, key
    assert lm["generate_s"] < lm["wall_s"] < lm["process_wall_s"]
    assert lm["questions_per_s"] == pytest.approx(smoke.questions / lm["wall_s"])
    checks = payload["checks"]
    assert checks["lm_eval_tokens_ok"] and checks["lm_eval_k_ok"] and checks["lm_eval_prompts_ok"]
    ours = payload["ours"]
    assert ours["available"], ours.get("reason")
    assert checks["ours_tokens_ok"] and checks["prompts_match"]  # the same prompts, every sample full length
    ratios = payload["ratios_ours_over_lm_eval"]
    assert ratios["generated_tokens_per_s"] == pytest.approx(ours["generated_tokens_per_s"] / lm["generated_tokens_per_s"])
    assert "lm-eval |" in capsys.readouterr().out
