"""The preference reward model: load_reward_model(HF *ForSequenceClassification dir).score(ids) equals transformers'
pooled score, and checkpoints it cannot represent are refused with one line naming the file and field."""
import json

import pytest
import torch

from r1_megatron.models.hf_config import HFConfigError
from r1_megatron.models.reward_model import load_reward_model, pooled_index
from tests.models import hf_fixtures

TOL = 1e-5  # the bound (fp32)
PAD = 3


def sequences(vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Lengths 1 to 40 (past the llama3 original context of 32), a pad token inside one sequence and at the end of
    another (transformers pools before a trailing pad token)."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randint(PAD + 1, vocab_size, (n,), generator=g).tolist() for n in (1, 5, 17, 40, 9, 23)]
    out[4][3] = PAD
    out[5][-1] = PAD
    return out


@torch.no_grad()
def hf_scores(hf_model, seqs: list[list[int]]) -> list[float]:
    """transformers' scores for the whole list as one right-padded batch with its attention mask."""
    pad = hf_model.config.pad_token_id
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), 1
    return hf_model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()


def max_diff(ours: list[float], theirs: list[float]) -> float:
    assert len(ours) == len(theirs)
    return max(abs(a - b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_scores_match_transformers(arch, tmp_path):
    hf_model = hf_fixtures.reward_model(arch, pad_token_id=PAD)
    hf_model.save_pretrained(tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm")
    seqs = sequences(hf_model.config.vocab_size)
    theirs = hf_scores(hf_model, seqs)
    assert max_diff(rm.score(seqs, batch_size=4), theirs) <= TOL  # batches of mixed lengths, reordered
    assert max_diff(rm.score(seqs, batch_size=1), theirs) <= TOL
    head = rm.model.output_layer.weight
    assert head.shape == (1, hf_model.config.hidden_size)  # no vocabulary-sized output layer is kept
    assert head.data_ptr() != rm.model.embedding.word_embeddings.weight.data_ptr()


def test_without_a_pad_token_the_last_token_is_scored(tmp_path):
    hf_model = hf_fixtures.reward_model("qwen2", pad_token_id=None, seed=1)
    hf_model.save_pretrained(tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm")
    seqs = sequences(hf_model.config.vocab_size, seed=1)
    with torch.no_grad():  # transformers refuses batches > 1 without a pad token: one sequence at a time
        theirs = [hf_model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    assert max_diff(rm.score(seqs, batch_size=3), theirs) <= TOL


def test_a_wrong_head_weight_is_detected(tmp_path):
    """The comparison has teeth: a small change to the score head moves the scores far past the tolerance."""
    hf_model = hf_fixtures.reward_model("qwen2", pad_token_id=PAD)
    hf_model.save_pretrained(tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        rm.model.output_layer.weight[0, 0] += 0.05
    seqs = sequences(hf_model.config.vocab_size)
    assert max_diff(rm.score(seqs), hf_scores(hf_model, seqs)) > 10 * TOL


def test_pooled_index():
    assert pooled_index([5, 6, 7], pad_token_id=None) == 2
    assert pooled_index([5, 6, 7], pad_token_id=0) == 2
    assert pooled_index([5, 0, 7, 0, 0], pad_token_id=0) == 2  # rightmost non-pad, even after a pad inside
    assert pooled_index([0, 0, 5, 6], pad_token_id=0) == 3  # left padding pools alike
    assert pooled_index([0, 0], pad_token_id=0) == 0  # transformers' argmax over an all-zero mask


def _config_dir(tmp_path, **changes):
    hf_model = hf_fixtures.reward_model("qwen2")
    hf_model.save_pretrained(tmp_path / "rm")
    file = tmp_path / "rm" / "config.json"
    raw = json.loads(file.read_text())
    raw.update(changes)
    file.write_text(json.dumps(raw))
    return tmp_path / "rm"


def test_two_labels_are_refused(tmp_path):
    directory = _config_dir(tmp_path, id2label={"0": "LABEL_0", "1": "LABEL_1"})
    with pytest.raises(HFConfigError, match=r"config\.json: field 'id2label'.*one output.*has 2"):
        load_reward_model(directory)


def test_a_causal_lm_is_refused(tmp_path):
    directory = _config_dir(tmp_path, architectures=["Qwen2ForCausalLM"])
    with pytest.raises(HFConfigError, match=r"field 'architectures'.*Qwen2ForSequenceClassification"):
        load_reward_model(directory)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: reward model directory does not exist"):
        load_reward_model(tmp_path / "nowhere")
