"""The reward model's scores at TP2, TP2 with sequence parallelism, PP2 and DP2 equal transformers'."""
import json

from tests.models import hf_fixtures
from tests.models.test_reward_model import PAD, TOL, hf_scores, sequences
from tests.parallel.launch import torchrun


def test_reward_scores_on_two_rank_layouts(tmp_path):
    hf_model = hf_fixtures.reward_model("qwen2", pad_token_id=PAD)
    hf_model.save_pretrained(tmp_path / "rm")
    seqs = sequences(hf_model.config.vocab_size)
    (tmp_path / "sequences.json").write_text(json.dumps(seqs))
    want = hf_scores(hf_model, seqs)
    layouts = ("tp2", "tp2sp", "pp2", "dp2")
    results = torchrun("reward", tmp_path, nproc=2, extra=(",".join(layouts),))
    for layout in layouts:
        for rank, result in enumerate(results):  # every rank's own scores, TP/PP ranks included
            assert result[layout]["sp"] == (layout == "tp2sp"), (layout, rank)
            for i, score in result[layout]["scores"].items():
                assert abs(score - want[int(i)]) <= TOL, (layout, rank, i, score, want[int(i)])
    dp_shares = [set(map(int, result["dp2"]["scores"])) for result in results]
    assert dp_shares == [{0, 2, 4}, {1, 3, 5}]  # DP ranks scored their own sequences
