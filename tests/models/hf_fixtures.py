"""Tiny random HF checkpoints made with transformers itself (the independent reference for logits parity).

Every weight is moved off its default init (norms away from 1, router weights spread so sigmoid scores differ,
non-zero expert bias, biases non-zero) so that a wrong mapping cannot hide behind symmetric initial values.
"""
from __future__ import annotations

import torch

YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32, beta_fast=32.0,
            beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)


def perturb_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.3, generator=g)
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))


def deepseek_v3(q_lora_rank=32, yarn=True, seed=0, **overrides):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    rope = dict(YARN) if yarn else dict(rope_type="default", rope_theta=10000.0)
    kwargs = dict(vocab_size=160, hidden_size=96, intermediate_size=112, moe_intermediate_size=40,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                  n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                  first_k_dense_replace=1, kv_lora_rank=24, q_lora_rank=q_lora_rank, qk_nope_head_dim=16,
                  qk_rope_head_dim=8, v_head_dim=20, max_position_embeddings=128, rope_parameters=rope,
                  rms_norm_eps=1e-6, num_nextn_predict_layers=0, tie_word_embeddings=False)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**kwargs)).float().eval()
    perturb_(model, seed + 1)
    return model


def qwen2(tied=False, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=150, hidden_size=96, intermediate_size=120, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                         rope_parameters=dict(rope_type="default", rope_theta=50000.0), rms_norm_eps=1e-6,
                         tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config).float().eval()
    perturb_(model, seed + 1)
    return model


def llama(tied=True, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=32)
    config = LlamaConfig(vocab_size=140, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128,
                         rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).float().eval()
    perturb_(model, seed + 1)
    return model


def prompts(vocab_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Batches of two prompts at lengths 1, 7 and 40 (40 is past original_max_position_embeddings=32, so the
    YaRN / llama3 scaled frequency bands are exercised)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (2, T), generator=g) for T in (1, 7, 40)]


@torch.no_grad()
def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids).logits.float()


# ---- a tiny Qwen2 HF directory as a new user would have it: weights, a BPE tokenizer and a chat template ------

CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen2's: pad/eos of base models, chat markers
CHAT_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                 "{%- endif %}")
CHAT_VOCAB = 384  # the byte-level alphabet (256) + specials + merges; divisible by TP 2 and 4


def chat_tokenizer():
    """A byte-level BPE (Qwen2's kind) trained on arithmetic text, with Qwen2's special tokens and chat template:
    transformers' PreTrainedTokenizerFast, eos <|im_end|>, pad <|endoftext|>, no bos."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = _arithmetic_bpe(CHAT_SPECIALS, pre_tokenizers.ByteLevel(add_prefix_space=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)


def _arithmetic_bpe(specials, pre_tokenizer):
    """A byte-level BPE backend with `specials` and `pre_tokenizer`, trained on arithmetic text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [f"What is {a} + {b}? The sum is {a + b}. #### {a + b}" for a in range(40) for b in range(0, 40, 3)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CHAT_VOCAB, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    return backend


def qwen2_chat_dir(directory, seed: int = 0):
    """Write a random tiny Qwen2ForCausalLM with `chat_tokenizer()` to `directory` (config.json with the special
    token ids, generation_config.json, safetensors, tokenizer.json, tokenizer_config.json, chat_template.jinja, as
    transformers' save_pretrained writes them); returns the directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = chat_tokenizer()
    assert len(tokenizer) <= CHAT_VOCAB
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=CHAT_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0), rms_norm_eps=1e-6,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config).float().eval()
    perturb_(model, seed + 1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---- a tiny Llama-3-style HF directory: tied weights, llama3 rope scaling, a BPE tokenizer with BOS -------------

LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA_CHAT_TEMPLATE = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
                       "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{%- endfor %}"
                       "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
                       "{%- endif %}")
# Llama-3's pre-tokenizer regex (tokenizer.json's Split pattern): digits in groups of up to three
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA_VOCAB = CHAT_VOCAB + 8  # more embedding rows than tokens, as real checkpoints pad their vocabulary


def llama_chat_tokenizer():
    """A byte-level BPE with Llama-3's Split regex, a BOS that encoding prepends (TemplateProcessing), eos
    <|eot_id|>, and R1's <think>/</think> as added non-special tokens."""
    from tokenizers import AddedToken, Regex, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend = _arithmetic_bpe(LLAMA_SPECIALS, pre)
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, backend.token_to_id(bos))])
    backend.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token="<|eot_id|>",
                                   chat_template=LLAMA_CHAT_TEMPLATE)


def llama_chat_dir(directory, seed: int = 0, tied: bool = True):
    """Write a random tiny LlamaForCausalLM (tied, llama3 rope scaling whose smooth band is hit: head_dim 16,
    original_max_position_embeddings 32) with `llama_chat_tokenizer()` to `directory`; returns the directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llama_chat_tokenizer()
    assert len(tokenizer) <= LLAMA_VOCAB
    torch.manual_seed(seed)
    rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=32)
    config = LlamaConfig(vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).float().eval()
    perturb_(model, seed + 1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---- a tiny DeepSeek-V3 HF directory with a DeepSeek-V3-style tokenizer (R1's) -------------------------------

DEEPSEEK_SPECIALS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
DEEPSEEK_CHAT_TEMPLATE = ("{{- bos_token }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
                          "{{- '<｜User｜>' + message['content'] }}{%- else %}{{- '<｜Assistant｜>' + "
                          "message['content'] + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}"
                          "{%- if add_generation_prompt %}{{- '<｜Assistant｜><think>\\n' }}{%- endif %}")
# DeepSeek-V3's pre-tokenizer (tokenizer.json): digit runs of up to three, CJK runs, then words and punctuation
DEEPSEEK_SPLITS = (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                   r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^""" + "\r\n"
                   + r"""\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+""" + "[\r\n]*" + r"""|\s*""" + "[\r\n]+"
                   + r"""|\s+(?!\S)|\s+""")


def deepseek_chat_dir(directory, seed: int = 0):
    """Write `deepseek_v3()` (YaRN, MLA with q_lora, MoE) with a DeepSeek-V3-style byte-level BPE (its three
    Splits, a BOS that encoding prepends, R1's <think> as an added token) and an R1-like chat template."""
    from tokenizers import AddedToken, Regex, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in DEEPSEEK_SPLITS]
    pre = pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend = _arithmetic_bpe(DEEPSEEK_SPECIALS, pre)
    bos = DEEPSEEK_SPECIALS[0]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, backend.token_to_id(bos))])
    backend.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=DEEPSEEK_SPECIALS[1],
                                        chat_template=DEEPSEEK_CHAT_TEMPLATE)
    assert len(tokenizer) <= LLAMA_VOCAB
    model = deepseek_v3(seed=seed, vocab_size=LLAMA_VOCAB, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---- tiny reward models: *ForSequenceClassification with one label (the scalar `score` head) -----------------

def reward_model(arch: str = "qwen2", pad_token_id: int | None = 3, seed: int = 0, **overrides):
    """A random tiny Qwen2ForSequenceClassification or LlamaForSequenceClassification (num_labels 1), perturbed
    like the causal LMs above; Llama is configured tied (a sequence classifier has no lm_head to tie)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(seed)
    if arch == "qwen2":
        config = Qwen2Config(vocab_size=150, hidden_size=96, intermediate_size=120, num_hidden_layers=2,
                             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                             rope_parameters=dict(rope_type="default", rope_theta=50000.0), rms_norm_eps=1e-6,
                             num_labels=1, pad_token_id=pad_token_id, **overrides)
        model = Qwen2ForSequenceClassification(config)
    else:
        rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=32)
        config = LlamaConfig(vocab_size=140, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128,
                             rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=True, num_labels=1,
                             pad_token_id=pad_token_id, **overrides)
        model = LlamaForSequenceClassification(config)
    model = model.float().eval()
    perturb_(model, seed + 1)
    return model
