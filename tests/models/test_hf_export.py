"""save_hf writes everything a user of the exported directory needs: the tokenizer with its chat template, the
special token ids (so that transformers' generate stops at EOS), and never a NaN/Inf weight."""
import json
import shutil

import pytest
import torch

from r1_megatron.models import build_model, load_hf, save_hf
from r1_megatron.models.hf_config import read_hf_config
from r1_megatron.rollout import Engine, SamplingParams
from r1_megatron.tokenizer import load_tokenizer
from tests.models import hf_fixtures

TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
MESSAGES = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"},
            {"role": "user", "content": "And 3 + 4?"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return hf_fixtures.qwen2_chat_dir(tmp_path_factory.mktemp("chat") / "src")


def test_export_keeps_the_chat_template_and_the_special_token_ids(chat_dir, tmp_path):
    from transformers import AutoTokenizer

    out = save_hf(load_hf(chat_dir), tmp_path / "out")
    ours, source = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(chat_dir)
    rendered = ours.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert rendered == source.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ours.apply_chat_template(MESSAGES)["input_ids"] == source.apply_chat_template(MESSAGES)["input_ids"]
    assert load_tokenizer(out).apply_chat_template(MESSAGES) == rendered
    config, source_config = (json.loads((d / "config.json").read_text()) for d in (out, chat_dir))
    assert {f: config[f] for f in TOKEN_ID_FIELDS} == {f: source_config[f] for f in TOKEN_ID_FIELDS}
    assert config["eos_token_id"] == ours.convert_tokens_to_ids("<|im_end|>")


def _relabel(model, a: int, b: int) -> None:
    """Swap tokens a and b in the input embedding and the output layer: the same model under renamed tokens."""
    with torch.no_grad():
        for weight in (model.embedding.word_embeddings.weight, model.output_layer.weight):
            weight[[a, b]] = weight[[b, a]]


def _greedy(model, prompt: list[int], eos_ids=()) -> list[int]:
    engine = Engine(model, max_batch_size=1, max_seq_len=64, eos_token_ids=eos_ids)
    return engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12))[0].token_ids


def test_generate_on_an_export_stops_at_eos_where_the_engine_does(chat_dir, tmp_path):
    """A model with no HF source, exported with a tokenizer-only directory (no generation_config.json): the ids
    come from the tokenizer. Greedy decoding is made to emit EOS at a step k >= 1 by relabelling the token it emits
    there as EOS; transformers must stop there, with our engine's tokens."""
    from transformers import AutoModelForCausalLM

    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(chat_dir / name, tokenizer_dir / name)
    tokenizer = load_tokenizer(tokenizer_dir)
    eos = tokenizer.eos_token_id
    weights = load_hf(chat_dir).state_dict()
    model = build_model(read_hf_config(chat_dir)[0])
    model.load_state_dict(weights)
    chat_prompt = tokenizer.encode(tokenizer.apply_chat_template(MESSAGES[:1]))
    free = _greedy(model, chat_prompt)
    k = max(i for i in range(1, len(free) - 1)  # the latest step that emits a new token, with no EOS before it
            if free[i] not in free[:i] + [eos] and eos not in free[:i])
    swap = {free[k]: eos, eos: free[k]}
    _relabel(model, free[k], eos)
    prompt = [swap.get(t, t) for t in chat_prompt]  # the same context under the new names (its <|im_end|> too)
    ours = _greedy(model, prompt, [eos])
    assert ours == free[:k] + [eos]
    out = save_hf(model, tmp_path / "out", tokenizer_dir=tokenizer_dir)
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (eos, tokenizer.pad_token_id,
                                                                                       None)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == eos
    hf = AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids = torch.tensor([prompt])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert theirs[0, len(prompt):].tolist() == ours


def test_non_finite_weights_are_refused_and_nothing_is_written(chat_dir, tmp_path):
    model = load_hf(chat_dir)
    save_hf(model, tmp_path / "out")
    fc1 = model.decoder.layers[1].mlp.linear_fc1.weight
    with torch.no_grad():
        fc1[-1, 0] = float("nan")  # the last row of [gate; up]: HF's up_proj
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' .*contains NaN or Inf"):
        save_hf(model, tmp_path / "out")
    with torch.no_grad():
        fc1[-1, 0] = 0.0
        model.decoder.final_layernorm.weight[3] = float("inf")
    with pytest.raises(ValueError, match=r"tensor 'model\.norm\.weight' .*contains NaN or Inf"):
        save_hf(model, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no new directory, no temporary left behind
    assert torch.isfinite(load_hf(tmp_path / "out").decoder.layers[1].mlp.linear_fc1.weight).all()
