"""benchmarks/bench_sft.py runs end to end in its smoke mode (tiny Qwen2, 1 warmup + 1 timed step per
configuration, every configuration in its own subprocess) and writes a complete JSON whose first-step losses agree
across r1_megatron's SFT step and the peers (transformers' Trainer / TRL's SFTTrainer where installed, else a plain
PyTorch loop) on the same examples; and the checks it makes can fail."""
import json
import math

import pytest

from tests.bench_scripts import load_bench

SUMMARY = ("tokens_per_s", "tokens_per_s_total", "tokens_per_s_best_step", "computed_tokens_per_s", "median_step_s",
           "real_tokens_timed", "computed_tokens_timed", "computed_efficiency", "first_step_loss")


def _load():
    return load_bench("bench_sft")


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_sft") / "sft.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1_MEGATRON_KERNELS", "torch")  # Triton's interpreter would only add time
        returned = bench.main(["--smoke", "--out", str(out)])
    return returned, json.loads(out.read_text()), out


def test_smoke_run_writes_every_field(report, bench):
    returned, payload, out = report
    assert returned == payload
    assert payload["benchmark"] == "sft" and not payload["errors"], payload["errors"]
    assert "--smoke" in payload["env"]["command"] and payload["env"]["torch"] and payload["env"]["device"]
    assert out.with_suffix(".png").stat().st_size > 0
    settings = payload["settings"]
    assert settings["smoke"] and settings["steps"] == 1 and settings["warmup"] == 1 and settings["dtype"] == "fp32"
    configs = settings["configs"]
    peers = [c for c in configs if c in bench.PEERS]
    assert set(bench.OURS) <= set(configs) and peers, configs
    entry = payload["sizes"]["tiny"]
    assert entry["model"]["config"]["hidden_size"] == bench.SIZES["tiny"]["hidden_size"]
    for config in configs:
        result = entry["configs"][config]
        summary = result["summary"]
        for key in SUMMARY:
            assert math.isfinite(summary[key]) and summary[key] > 0, (config, key, summary[key])
        assert summary["timed_steps"] == 1 and 0 < summary["computed_efficiency"] <= 1
        assert len(result["losses"]) == settings["warmup"] + settings["steps"]
    for ours in bench.OURS:
        for peer in peers:
            ratio = entry["ratios"][f"{ours}/{peer}"]
            assert ratio == pytest.approx(entry["configs"][ours]["summary"]["tokens_per_s"] /
                                          entry["configs"][peer]["summary"]["tokens_per_s"])


def test_same_steps_give_the_same_tokens(report, bench):
    """The same-data configurations train on the same sequences: same real-token counts step by step."""
    _, payload, _ = report
    entry = payload["sizes"]["tiny"]
    same = [c for c in payload["settings"]["configs"] if c in bench.SAME_DATA]
    tokens = {c: entry["configs"][c]["rounds"][0]["tokens"] for c in same}
    assert len(set(map(tuple, tokens.values()))) == 1, tokens
    assert len({entry["configs"][c]["first_step_hash"] for c in same}) == 1


def test_first_step_losses_agree(report, bench):
    _, payload, _ = report
    check = payload["sizes"]["tiny"]["loss_check"]
    assert check["ok"] and check["same_first_step_sequences"]
    assert check["tolerance"] == bench.LOSS_TOL["fp32", "cpu"]
    assert check["max_abs_difference"] <= check["tolerance"]
    same = [c for c in payload["settings"]["configs"] if c in bench.SAME_DATA]
    for config in same:  # every same-data configuration against the unpacked HF reference
        assert abs(check["differences"][f"{config}-reference"]) <= check["tolerance"], config
    assert 3.0 < check["reference_loss"] < 8.0  # a random model over a 128-token vocabulary: ~ln(128) = 4.85
    if "trl_pack" in payload["settings"]["configs"]:
        assert abs(check["own_reference_differences"]["trl_pack-own_reference"]) <= check["tolerance"]


def test_packing_efficiency_table(report):
    _, payload, _ = report
    eff = payload["packing_efficiency"]
    settings = payload["settings"]
    assert [r["budget"] for r in eff["by_budget"]] == settings["budgets"]
    assert eff["examples"] == settings["examples"] and eff["real_tokens"] > 0
    for row in eff["by_budget"]:
        assert 0 < row["ours_pack"] <= 1 and 0 < row["ffd_whole_set"] <= 1
        assert row["ffd_whole_set"] >= row["ours_pack"] - 1e-12  # packing across steps can only fill rows better
    # one global batch packed into rows of max_seq_len wastes less than padding every row to the step's longest
    assert eff["by_budget"][0]["ours_pack"] > eff["pad_to_step_longest"]
    assert eff["pad_per_micro_batch"] >= eff["pad_to_step_longest"]


def test_the_loss_check_fails_on_a_mismatch(bench):
    def result(loss, reference=5.0, digest="abc"):
        return {"summary": {"first_step_loss": loss}, "reference_loss": reference, "first_step_hash": digest,
                "losses": [loss, 4.0]}

    good = {"ours_pack": result(5.0), "trainer_pad": result(5.00001)}
    assert bench.loss_check(good, "abc", 1e-4)["ok"]
    assert not bench.loss_check(good, "abc", 1e-6)["ok"]
    assert not bench.loss_check({**good, "trainer_pad": result(5.001)}, "abc", 1e-4)["ok"]
    assert not bench.loss_check({**good, "trainer_pad": result(5.0, digest="other")}, "abc", 1e-4)["ok"]
    packed = {"summary": {"first_step_loss": 5.2}, "reference_loss": 5.0, "first_step_hash": "x", "losses": [5.2]}
    assert not bench.loss_check({**good, "trl_pack": packed}, "abc", 1e-4)["ok"]
    assert not bench.loss_check({"ours_pack": result(5.0, reference=None)}, "abc", 1e-4)["ok"]  # no reference


def test_the_tolerance_tells_data_apart(bench, tmp_path):
    """With the benchmark's weights the loss depends on the exact data: another batch, or labels shifted by one,
    moves the reference loss by far more than the tolerance, so a not-like-for-like comparison would fail."""
    bench.write_checkpoint(bench.SIZES["tiny"], tmp_path, seed=0)
    records = bench.chat_records(16, 24.0, 1.0, 256, bench.chars_per_token(tmp_path), seed=0)
    examples = bench.render(records, tmp_path, 256, seed=0)
    pairs = [(e["tokens"], bench.hf_labels(e["tokens"], e["loss_mask"])) for e in examples]
    first = bench.reference_loss(str(tmp_path), pairs[:8], "cpu")
    other = bench.reference_loss(str(tmp_path), pairs[8:], "cpu")
    shifted = bench.reference_loss(str(tmp_path), [(t, lab[1:] + [-100]) for t, lab in pairs[:8]], "cpu")
    tol = bench.LOSS_TOL["fp32", "cpu"]
    assert abs(first - other) > 20 * tol and abs(first - shifted) > 100 * tol, (first, other, shifted)


def test_config_choice_follows_what_is_installed(bench, monkeypatch):
    monkeypatch.setattr(bench, "_installed", lambda package: None)
    skipped = {}
    assert bench.choose_configs(None, skipped) == ["ours_pack", "ours_pad", "torch_loop"]
    assert {"trainer_pad", "trl_pad", "trl_pack"} <= set(skipped)
    with pytest.raises(SystemExit, match="cannot run here"):
        bench.choose_configs("ours_pack,trl_pack", {})
    monkeypatch.setattr(bench, "_installed", lambda package: "1.0")
    assert bench.choose_configs(None, {}) == ["ours_pack", "ours_pad", "trainer_pad", "trl_pad", "trl_pack"]


def test_hf_labels_follow_the_loss_mask(bench):
    # loss_mask[t] trains tokens[t + 1]; HF shifts labels inside the model, so labels[t + 1] carries it
    assert bench.hf_labels([7, 8, 9, 10], [0.0, 1.0, 1.0]) == [-100, -100, 9, 10]
    assert bench.sequences_hash([[1, 2], [3]]) == bench.sequences_hash([[3], [1, 2]])
    assert bench.assistant_lengths(50, 40.0, 1.0, 100, seed=0) == bench.assistant_lengths(50, 40.0, 1.0, 100, seed=0)
    assert max(bench.assistant_lengths(500, 40.0, 1.0, 100, seed=0)) == 100  # capped
