"""GGUF export checked by llama.cpp itself (llama-cpp-python): a tiny Qwen2 (untied, qkv biases, byte-level BPE
with the GPT-2 regex, chat template) and a tiny Llama (tied, llama3 rope scaling, Llama-3 regex, BOS, added
<think> tokens, padded vocabulary) load, tokenize like our tokenizer, give our fp32 logits within the tolerances
measured below and our engine's greedy tokens. The refusals need no llama.cpp."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from r1_megatron.models import load_hf, logits
from r1_megatron.models.gguf_export import export_gguf, llama3_rope_factors, rope_halves_to_pairs
from r1_megatron.models.hf_config import read_hf_config
from r1_megatron.rollout import Engine, SamplingParams
from r1_megatron.tokenizer import load_tokenizer
from tests.models import hf_fixtures

MESSAGES = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"},
            {"role": "user", "content": "And 3 + 4?"}]
# max |logit - ours| over the 106 / 124 / 52-token prompt of _prompt (logits up to ~2.4 in size), measured on CPU
# with llama-cpp-python 0.3.36 (Qwen2 / Llama / DeepSeek-V3): f32 6.3e-4 / 5.5e-4 / 1.9e-3 (llama.cpp keeps the KV
# cache in f16), f16 1.6e-3 / 1.5e-3 / 3.2e-3, bf16 1.3e-2 / 1.1e-2 / 2.8e-2, q8_0 3.4e-2 / 3.4e-2 / 8.2e-2 (at
# all positions but one of DeepSeek-V3's, where q8_0 flips a near-tie of its top-k expert routing: 0.72)
TOLERANCES = {"f32": 5e-3, "f16": 1e-2, "bf16": 8e-2, "q8_0": 0.2}
# the share of positions a MoE model's bf16 / q8_0 logits may miss the tolerance by: two router scores closer than
# the weights' rounding pick other experts (q8_0: 1 of 52 positions; bf16 too, 1 of 52, on a build with AVX512_BF16)
MOE_ROUTING_FLIPS = 0.05
Q8_0_GREEDY_GAP = 5e-2  # ~3x the largest gap measured (1.7e-2); see the greedy test
TEXTS = ["What is 12 + 7? The sum is 19. #### 19", "中文字符 and カタカナ 12345",
         " leading space,  two spaces\nand a newline\n\n",
         "digits 1234567 and 3.14159", "héllo wörld 世界 ✓", "<think>12 + 7 = 19</think> 19",
         "<|im_start|>user\nhi<|im_end|>", "<|start_header_id|>user<|end_header_id|>"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_sources")
    # the tied Llama's greedy output repeats its last input token (tied embeddings of a random model); the untied
    # one gives varied greedy continuations
    return {"qwen2": hf_fixtures.qwen2_chat_dir(root / "qwen2"), "llama": hf_fixtures.llama_chat_dir(root / "llama"),
            "llama_untied": hf_fixtures.llama_chat_dir(root / "llama_untied", tied=False),
            "deepseek_v3": hf_fixtures.deepseek_chat_dir(root / "deepseek_v3")}


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    """(arch, outtype) -> the GGUF file, written once."""
    root, files = tmp_path_factory.mktemp("gguf_files"), {}

    def get(arch: str, outtype: str):
        if (arch, outtype) not in files:
            files[arch, outtype] = export_gguf(sources[arch], root / f"{arch}-{outtype}.gguf", outtype=outtype)
        return files[arch, outtype]
    return get


@pytest.fixture(scope="module")
def ours(sources):
    return {arch: load_hf(directory) for arch, directory in sources.items()}


def _llama(path):
    """llama.cpp on `path`, without its extra CPU buffer types (AMX and the repacked quant layouts): a build
    for a CPU with AMX (pip builds llama-cpp-python 0.3.36 with GGML_NATIVE, and this machine's Xeon has
    AMX_INT8) segfaults in the first q8_0 matmul on these files, as it does on llama.cpp's own
    convert_hf_to_gguf.py output of the same model; use_extra_bufts=False (llama-cli's --no-repack) runs the
    plain CPU kernels, which compute the same products."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the test extra)")
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffer_types():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:  # Llama() reads the defaults once, while loading
        patch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_extra_buffer_types)
        return llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False)


def _prompt(directory, repeat: int = 2) -> list[int]:
    """The chat-rendered MESSAGES (special tokens included), repeated: 106 (Qwen2) / 124 (Llama) tokens, past the
    Llama fixture's original_max_position_embeddings (32), where its llama3 frequency scaling shows."""
    tokenizer = load_tokenizer(directory)
    return tokenizer.encode(tokenizer.apply_chat_template(MESSAGES)) * repeat


def _llama_cpp_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own sampler at top_k 1 (greedy), no repetition penalty."""
    out = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            return out
    return out


def _engine_greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    engine = Engine(model, max_batch_size=len(prompts), max_seq_len=max(map(len, prompts)) + n)
    return [out.token_ids for out in engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=n))]


@pytest.mark.parametrize(("arch", "outtype"), [(arch, outtype) for arch in ("qwen2", "llama", "deepseek_v3")
                                               for outtype in TOLERANCES]
                         + [("llama_untied", "f16")])
def test_llama_cpp_logits_match_ours_within_the_measured_tolerance(sources, exported, ours, arch, outtype):
    llm = _llama(exported(arch, outtype))
    try:
        prompt = _prompt(sources[arch])
        llm.eval(prompt)
        theirs_TV = np.asarray(llm.scores[:len(prompt)])
        ours_TV = logits(ours[arch], torch.tensor([prompt]))[0].float().numpy()
        assert theirs_TV.shape == ours_TV.shape
        error_T = np.abs(theirs_TV - ours_TV).max(axis=1)
        if arch == "deepseek_v3" and outtype in ("bf16", "q8_0"):
            assert (error_T > TOLERANCES[outtype]).mean() <= MOE_ROUTING_FLIPS
        else:
            assert error_T.max() <= TOLERANCES[outtype]
    finally:
        llm.close()


def _greedy_gap(model, prompt: list[int], completion: list[int]) -> float:
    """How far below our best logit each completion token lies, at worst, with the completion teacher-forced:
    0 for our own greedy tokens."""
    ids = prompt + completion
    logits_TV = logits(model, torch.tensor([ids]))[0, len(prompt) - 1:-1]
    chosen_T = logits_TV.gather(1, torch.tensor(completion)[:, None])[:, 0]
    return (logits_TV.max(dim=1).values - chosen_T).max().item()


@pytest.mark.parametrize("arch", ["qwen2", "llama_untied", "deepseek_v3"])  # the tied Llama repeats one token
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama_cpp_greedy_tokens_equal_our_engines(sources, exported, ours, arch, outtype):
    """f16: llama.cpp's greedy tokens are our engine's. q8_0 loads and generates; its logit error (3.4e-2) flips
    near-ties of the random untied Llama (its picks lie up to 1.7e-2 below our best logit, measured), so each
    token it picks must be our greedy choice up to Q8_0_GREEDY_GAP (dense models)."""
    llm = _llama(exported(arch, outtype))
    tokenizer = load_tokenizer(sources[arch])
    prompts = [tokenizer.encode(text, add_special_tokens=True)
               for text in ("What is 12 + 7?", "The sum is", "#### 3", "3 + 4 = 7")]
    try:
        theirs = [_llama_cpp_greedy(llm, prompt, 12) for prompt in prompts]
    finally:
        llm.close()
    assert all(len(tokens) == 12 for tokens in theirs)
    if outtype == "f16":
        assert theirs == _engine_greedy(ours[arch], prompts, 12)
    elif arch != "deepseek_v3":  # a MoE's routing flips (see TOLERANCES) change whole next-token distributions
        assert max(_greedy_gap(ours[arch], p, t) for p, t in zip(prompts, theirs)) <= Q8_0_GREEDY_GAP


@pytest.mark.parametrize("arch", ["qwen2", "llama", "deepseek_v3"])
def test_the_gguf_tokenizer_is_ours_with_the_chat_template_and_special_ids(sources, exported, arch):
    llm = _llama(exported(arch, "f16"))
    tokenizer, config = load_tokenizer(sources[arch]), json.loads((sources[arch] / "config.json").read_text())
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(
                text, add_special_tokens=True), text
            assert llm.detokenize(tokenizer.encode(text), special=True).decode() == text
        chat = tokenizer.apply_chat_template(MESSAGES)  # carries its own BOS where the model has one
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == tokenizer.encode(chat)
        meta = llm.metadata
        assert meta["tokenizer.chat_template"] == tokenizer.chat_template
        assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.eos_token_id == config["eos_token_id"]
        assert meta["tokenizer.ggml.add_bos_token"] == ("false" if arch == "qwen2" else "true")
        if arch != "qwen2":
            assert int(meta["tokenizer.ggml.bos_token_id"]) == tokenizer.bos_token_id == config["bos_token_id"]
        assert llm.n_vocab() == config["vocab_size"]
    finally:
        llm.close()


def test_the_documented_llama_cpp_python_chat_runs_with_the_embedded_template(sources, exported, capsys):
    """docs/gguf.md's snippet, on the tiny Qwen2: llama-cpp-python renders the chat through the GGUF's template."""
    from tests.doc_examples import doc_examples

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the test extra)")
    code = doc_examples("gguf.md")["llama-cpp-python"]
    assert '"my-model.gguf"' in code
    namespace = {}
    exec(code.replace('"my-model.gguf"', repr(str(exported("qwen2", "f16")))), namespace)
    namespace["llm"].close()
    choice = namespace["out"]["choices"][0]
    tokenizer = load_tokenizer(sources["qwen2"])  # the prompt it sent is our rendering of the same chat
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}])
    assert namespace["out"]["usage"]["prompt_tokens"] == len(tokenizer.encode(chat))
    assert choice["finish_reason"] in ("stop", "length")
    assert capsys.readouterr().out == choice["message"]["content"] + "\n"


def test_an_official_style_deepseek_v3_exports_dequantised_and_without_mtp(sources, ours, tmp_path):
    """DeepSeek's release: block-scaled FP8 weights (dequantised as load_hf does) and an MTP layer (left out, as
    llama.cpp's converter does): llama.cpp gives our logits on the dequantised model."""
    from tests.models.test_hf_fp8 import BLOCK, quantize_blockwise

    source = tmp_path / "src"
    shutil.copytree(sources["deepseek_v3"], source)
    tensors = load_file(source / "model.safetensors")
    for name, weight in list(tensors.items()):
        if name.endswith("proj.weight") and ".layers." in name:
            tensors[name], tensors[f"{name}_scale_inv"] = quantize_blockwise(weight.float())
    tensors["model.layers.3.enorm.weight"] = torch.ones(96)  # the MTP module's first tensor (layer num_layers)
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config.update(num_nextn_predict_layers=1, quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                                                   "weight_block_size": list(BLOCK)})
    (source / "config.json").write_text(json.dumps(config))
    llm = _llama(export_gguf(source, tmp_path / "ds.gguf"))
    try:
        prompt = _prompt(source)
        llm.eval(prompt)
        ours_TV = logits(load_hf(source, drop_mtp=True), torch.tensor([prompt]))[0].float().numpy()
        assert np.abs(np.asarray(llm.scores[:len(prompt)]) - ours_TV).max() <= TOLERANCES["f16"]
        assert np.abs(ours_TV - logits(ours["deepseek_v3"], torch.tensor([prompt]))[0].numpy()).max() > 1e-3
    finally:
        llm.close()


def test_q8_0_stores_the_weights_quantized(exported):
    import gguf

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(exported("llama", "q8_0")).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["rope_freqs.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding


def test_checkpoint_export_through_the_cli(sources, ours, tmp_path, capsys):
    """`r1-megatron export --ckpt RUN --format gguf` (through the HF exporter) gives llama.cpp our logits, and
    leaves only the GGUF file behind; a refused export leaves nothing."""
    from r1_megatron.cli import main
    from r1_megatron.runtime import ensure_parallel_state
    from r1_megatron.training.checkpoint import save_checkpoint
    from tests.parallel import training_fixtures as tf

    ensure_parallel_state()
    save_checkpoint(tmp_path / "run" / "checkpoints", 1, *tf.setup(sources["qwen2"]), tokenizer_dir=sources["qwen2"])
    out = tmp_path / "out" / "model.gguf"
    bad_tokenizer = tmp_path / "bad_tokenizer"  # a tokenizer llama.cpp would split differently: refused, no files
    shutil.copytree(sources["qwen2"], bad_tokenizer)
    raw = json.loads((bad_tokenizer / "tokenizer.json").read_text())
    (bad_tokenizer / "tokenizer.json").write_text(json.dumps({**raw, "pre_tokenizer": {"type": "Whitespace"}}))
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--format", "gguf", "--out", str(out),
                 "--tokenizer", str(bad_tokenizer)]) == 2
    assert "pre_tokenizer: not one llama.cpp implements" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--format", "gguf", "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]
    llm = _llama(out)
    try:
        assert llm.metadata["general.name"] == "model"  # the file's stem, not the temporary HF directory's
        prompt = _prompt(sources["qwen2"], repeat=1)
        llm.eval(prompt)
        ours_TV = logits(ours["qwen2"], torch.tensor([prompt]))[0].float().numpy()
        assert np.abs(np.asarray(llm.scores[:len(prompt)]) - ours_TV).max() <= TOLERANCES["f16"]
    finally:
        llm.close()


# ---- the pieces against independent references (no llama.cpp needed) --------------------------------------

def _rotate(x_TD: torch.Tensor, angle_TF: torch.Tensor, pairs: bool) -> torch.Tensor:
    """Rope on one head: HF's rotate-half (dims i, i + D/2) or llama.cpp's adjacent pairs (2i, 2i + 1)."""
    a, b = (x_TD[:, 0::2], x_TD[:, 1::2]) if pairs else x_TD.chunk(2, dim=-1)
    cos, sin = angle_TF.cos(), angle_TF.sin()
    ra, rb = a * cos - b * sin, b * cos + a * sin
    return torch.stack([ra, rb], dim=-1).flatten(1) if pairs else torch.cat([ra, rb], dim=-1)


def test_rope_halves_to_pairs_keeps_every_attention_score():
    """q·k after rotate-half rope with HF's rows == q·k after pairwise rope with the permuted rows, per head."""
    g = torch.Generator().manual_seed(0)
    H, D, I, T = 3, 8, 5, 6
    wq, wk, x = (torch.randn(H * D, I, generator=g), torch.randn(H * D, I, generator=g),
                 torch.randn(T, I, generator=g))
    angle_TF = torch.arange(T)[:, None] * (10000.0 ** (-torch.arange(0, D, 2) / D))[None]
    pq, pk = (torch.from_numpy(rope_halves_to_pairs(w.numpy(), H)) for w in (wq, wk))
    for h in range(H):
        rows = slice(h * D, (h + 1) * D)
        hf = _rotate(x @ wq[rows].T, angle_TF, False) @ _rotate(x @ wk[rows].T, angle_TF, False).T
        cpp = _rotate(x @ pq[rows].T, angle_TF, True) @ _rotate(x @ pk[rows].T, angle_TF, True).T
        torch.testing.assert_close(cpp, hf, rtol=1e-5, atol=1e-5)
    assert not torch.equal(pq, wq)


def test_llama3_rope_factors_divide_transformers_frequencies(sources):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = AutoConfig.from_pretrained(sources["llama"])
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    d = hf_config.head_dim
    base = 1.0 / hf_config.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    factors = llama3_rope_factors(read_hf_config(sources["llama"])[0])
    np.testing.assert_allclose(factors, (base / scaled.double()).numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0 and ((factors > 1) & (factors < 8)).any()


@pytest.mark.parametrize(("overrides", "error"), [
    (dict(rope_parameters=dict(hf_fixtures.YARN, mscale=0.707)),
     r"yarn mscale=0.707 is not supported \(llama.cpp's deepseek2 uses 1.0\)"),
    (dict(q_lora_rank=None), r"DeepSeek-V3 with q_lora_rank=null is not supported")])
def test_what_llama_cpp_would_compute_differently_is_refused(tmp_path, overrides, error):
    hf_fixtures.deepseek_v3(**overrides).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=error):
        export_gguf(tmp_path, tmp_path / "x.gguf")


@pytest.mark.parametrize(("value", "error"), [(float("nan"), "contains NaN or Inf"),
                                              (1e5, "overflows float16")])
def test_non_finite_weights_are_refused_and_nothing_is_written(sources, tmp_path, value, error):
    source = tmp_path / "src"
    shutil.copytree(sources["qwen2"], source)
    weights = load_file(source / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = value
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"'model.layers.1.mlp.up_proj.weight' {error}"):
        export_gguf(source, tmp_path / "out" / "x.gguf", outtype="f16")
    assert list((tmp_path / "out").iterdir()) == []
    if error == "overflows float16":  # a finite weight bf16 can hold
        assert export_gguf(source, tmp_path / "out" / "x.gguf", outtype="bf16").is_file()


def test_a_pre_tokenizer_llama_cpp_lacks_is_refused(sources, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(sources["qwen2"], source)
    raw = json.loads((source / "tokenizer.json").read_text())
    raw["pre_tokenizer"] = {"type": "Whitespace"}
    (source / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="tokenizer.json pre_tokenizer: not one llama.cpp implements"):
        export_gguf(source, tmp_path / "x.gguf")


def test_the_cli_refuses_gguf_options_without_format_gguf(sources, tmp_path, capsys):
    from r1_megatron.cli import main

    assert main(["export", "--model", str(sources["qwen2"]), "--out", str(tmp_path / "x")]) == 2
    assert "--model needs --format gguf" in capsys.readouterr().err
    out = tmp_path / "x.gguf"
    assert main(["export", "--model", str(sources["qwen2"]), "--format", "gguf", "--outtype", "q8_0",
                 "--out", str(out)]) == 0
    assert out.is_file()
