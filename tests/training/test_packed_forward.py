"""Packed micro-batches (several conversations to a row) give what one conversation per row gives: the same
per-token logits, loss and parameter gradients, for standard attention with GQA (Qwen2) and MLA + MoE + YaRN
(DeepSeek-V3); and the masked SFT loss equals transformers' on the same checkpoint and conversations.

MoE: routing is per token, so packing changes no token's output; the aux losses (which see padding tokens and
treat a packed row as one sequence) are off in these models (coefficient 0, checked below)."""
import pytest
import torch

from r1_megatron.models import load_hf
from r1_megatron.models.attention import SDPAttention
from r1_megatron.models.logits import position_ids_like
from r1_megatron.training import model_forward as model_forward_module
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.model_forward import model_forward, schedule_shape
from tests.models import hf_fixtures
from tests.training import packed_fixtures as pf

TOL = 1e-6  # fp32: the same math on differently shaped matmuls (measured up to ~5e-7 on logits of scale ~1)
HF_TOL = 1e-5  # our model vs transformers, as in the logits parity tests
MODELS = {"qwen2": hf_fixtures.qwen2, "deepseek_v3": hf_fixtures.deepseek_v3}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for name, make in MODELS.items():
        hf = make()
        hf.save_pretrained(root / name)
        out[name] = (hf, root / name)
    return out


def _loaded(checkpoints, name):
    hf, path = checkpoints[name]
    model = load_hf(path)
    model.train()
    if model.config.num_moe_experts:
        assert model.config.moe_aux_loss_coeff == 0 and not model.config.moe_z_loss_coeff
    return hf, model


def loss_and_grads(model, mb):
    """(logits, Σ mask·CE / Σ mask, {parameter: gradient}) of one forward/backward."""
    model.zero_grad(set_to_none=True)
    logits_BTV = model_forward(model, mb)
    loss_sum, count = next_token_cross_entropy(logits_BTV, mb)
    loss = loss_sum / count
    loss.backward()
    return logits_BTV.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str):
    scale = max(1.0, b.abs().max().item())  # absolute below 1, relative above
    assert (a - b).abs().max().item() <= tol * scale, (what, (a - b).abs().max().item(), scale)


@pytest.mark.parametrize("name", MODELS)
def test_packed_equals_one_sequence_per_row(checkpoints, name):
    hf, model = _loaded(checkpoints, name)
    convs = pf.conversations(hf.config.vocab_size)
    packed_mb, where = pf.packed(convs)
    logits_p, loss_p, grads_p = loss_and_grads(model, packed_mb)
    logits_u, loss_u, grads_u = loss_and_grads(model, pf.one_per_row(convs))
    for i, (a, b) in enumerate(zip(pf.per_conversation(logits_p, where), pf.per_row(logits_u, convs))):
        assert_close(a, b, TOL, f"logits of conversation {i}")
    assert_close(loss_p, loss_u, TOL, "loss")
    assert grads_p.keys() == grads_u.keys()
    for param in grads_u:
        assert_close(grads_p[param], grads_u[param], TOL, param)
    assert sum(g.abs().sum() > 0 for g in grads_u.values()) == len(grads_u)  # every parameter is exercised


def test_packing_is_not_a_no_op(checkpoints):
    """The comparison has teeth: the same packed row without segment ids (one causal sequence, row positions)
    changes the logits of every conversation after the first of a row."""
    hf, model = _loaded(checkpoints, "deepseek_v3")
    convs = pf.conversations(hf.config.vocab_size)
    packed_mb, where = pf.packed(convs)
    with torch.no_grad():
        right = model_forward(model, packed_mb)
        wrong = model(packed_mb.input_ids, position_ids_like(packed_mb.input_ids), None)
    r, start, n = where[1]
    assert (right[r, start:start + n] - wrong[r, start:start + n]).abs().max() > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_masked_sft_loss_equals_transformers(checkpoints, name):
    """transformers' own masked loss (labels −100 off the response, right padding, attention_mask) on the same
    conversations: the mean CE over response tokens."""
    hf, model = _loaded(checkpoints, name)
    convs = pf.conversations(hf.config.vocab_size, seed=3)
    L = max(len(c.ids) for c in convs)
    ids = torch.zeros(len(convs), L, dtype=torch.long)
    labels = torch.full((len(convs), L), -100)
    attention = torch.zeros(len(convs), L, dtype=torch.long)
    for i, c in enumerate(convs):
        n = len(c.ids)
        ids[i, :n], attention[i, :n] = torch.tensor(c.ids), 1
        labels[i, c.prompt_len:n] = torch.tensor(c.ids[c.prompt_len:])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=attention, labels=labels).loss
        packed_mb, _ = pf.packed(convs)
        loss_sum, count = next_token_cross_entropy(model_forward(model, packed_mb), packed_mb)
    assert count == (labels[:, 1:] != -100).sum()
    assert abs((loss_sum / count).item() - theirs.item()) <= HF_TOL


def test_unpacked_forward_is_unchanged(checkpoints):
    _, model = _loaded(checkpoints, "qwen2")
    mb = pf.one_per_row(pf.conversations(150))
    with torch.no_grad():
        assert torch.equal(model_forward(model, mb), model(mb.input_ids, position_ids_like(mb.input_ids), None))
    assert schedule_shape(mb) == (mb.shape[1], mb.shape[0])


def test_positions_default_from_segments(checkpoints):
    """position_ids None on a packed micro-batch: positions restart at each segment."""
    hf, model = _loaded(checkpoints, "qwen2")
    packed_mb, _ = pf.packed(pf.conversations(hf.config.vocab_size))
    without = packed_mb.map(lambda t: t)
    without.position_ids = None
    with torch.no_grad():
        assert torch.equal(model_forward(model, without), model_forward(model, packed_mb))


def test_packed_checks_name_the_problem(checkpoints):
    hf, model = _loaded(checkpoints, "qwen2")
    packed_mb, _ = pf.packed(pf.conversations(hf.config.vocab_size))
    too_far = packed_mb.map(lambda t: t)
    too_far.position_ids = packed_mb.position_ids + packed_mb.shape[1]
    with pytest.raises(ValueError, match="position_ids reach"):
        model_forward(model, too_far)


# ---- the TransformerEngine (THD) path, with TE's varlen attention replaced by SDPA over cu_seqlens ------------

class THDAttention(SDPAttention):
    """Test double of TE's attention for qkv_format="thd": query [t, n, d], key/value [t, g, d] of one flattened
    sequence, attention causal within each cu_seqlens segment; everything around it (flattening, cu_seqlens,
    Megatron's THD rotary, MLA's THD reshapes, the logits view) is the real path."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        assert packed_seq_params is not None and packed_seq_params.qkv_format == "thd" and query.dim() == 3
        t = query.shape[0]
        cu = packed_seq_params.cu_seqlens_q.long()
        assert cu[-1] == t and packed_seq_params.max_seqlen_q == int((cu[1:] - cu[:-1]).max())
        seg_T = torch.zeros(t, dtype=torch.long).index_fill_(0, cu[1:-1], 1).cumsum(0)
        masked_TT = ~((seg_T[:, None] == seg_T[None, :]) & torch.ones(t, t, dtype=torch.bool).tril())
        out = super().forward(query[:, None], key[:, None], value[:, None], masked_TT[None, None])
        return out[:, 0]  # [t, n·dv], as TE returns it


@pytest.mark.parametrize("name", MODELS)
def test_thd_path_equals_one_sequence_per_row(checkpoints, name, monkeypatch):
    from r1_megatron.models import specs

    monkeypatch.setattr(specs, "core_attention_module", lambda: THDAttention)
    monkeypatch.setattr(model_forward_module, "takes_packed_seq_params", lambda: True)
    hf, model = _loaded(checkpoints, name)
    convs = pf.conversations(hf.config.vocab_size)
    packed_mb, where = pf.packed(convs)
    assert schedule_shape(packed_mb) == (packed_mb.input_ids.numel(), 1)
    logits_p, loss_p, grads_p = loss_and_grads(model, packed_mb)
    monkeypatch.setattr(specs, "core_attention_module", lambda: SDPAttention)
    _, reference = _loaded(checkpoints, name)
    logits_u, loss_u, grads_u = loss_and_grads(reference, pf.one_per_row(convs))
    for i, (a, b) in enumerate(zip(pf.per_conversation(logits_p, where), pf.per_row(logits_u, convs))):
        assert_close(a, b, TOL, f"logits of conversation {i}")
    assert_close(loss_p, loss_u, TOL, "loss")
    for param in grads_u:
        assert_close(grads_p[param], grads_u[param], TOL, param)


def test_sdpa_attention_refuses_packed_seq_params(checkpoints, monkeypatch):
    monkeypatch.setattr(model_forward_module, "takes_packed_seq_params", lambda: True)
    hf, model = _loaded(checkpoints, "qwen2")
    packed_mb, _ = pf.packed(pf.conversations(hf.config.vocab_size))
    with pytest.raises(ValueError, match="SDPAttention does not take packed_seq_params"):
        model_forward(model, packed_mb)
