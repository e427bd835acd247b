"""Routing replay (models/routing_replay.py): the session arithmetic by hand, the engine's recorded experts
against a plain full forward's, and replay making the training forward route exactly as the rollout did."""
import pytest
import torch

from r1_megatron.grpo.logprob_pass import forward_logprobs
from r1_megatron.grpo.rollout_batch import RolloutSample, micro_batches, packed_micro_batches
from r1_megatron.kernels.options import LossAgg
from r1_megatron.models import build_model, preset
from r1_megatron.models.routing_replay import RoutingAgreement, RoutingMode, RoutingReplay, router_order, routing_control
from r1_megatron.rollout import CacheConfig, Engine, SamplingParams
from r1_megatron.runtime import ensure_parallel_state, seed_everything
from tests.models.routing_capture import expert_sets, replayed_counts, routed_experts


# ------------------------------------------------------------------------------------------- by hand

def test_replay_returns_the_recorded_experts_with_the_trainers_scores_and_counts_agreement():
    scores_NE = torch.tensor([[0.9, 0.8, 0.1, 0.2], [0.1, 0.7, 0.6, 0.3], [0.5, 0.4, 0.3, 0.2]])
    own_NK = scores_NE.topk(2).indices  # [[0, 1], [1, 2], [0, 1]]
    recorded_LNK = torch.tensor([[[1, 0], [2, 3], [-1, -1]]])  # token 0: same set; token 1: one of two; 2: none
    agreement = RoutingAgreement(1, torch.device("cpu"))
    values, experts = RoutingReplay(recorded_LNK, replay=True, agreement=agreement).route(
        0, scores_NE, scores_NE.topk(2).values, own_NK)
    assert experts.tolist() == [[1, 0], [2, 3], [0, 1]]  # a token with no record keeps its own choice
    assert torch.equal(values, torch.tensor([[0.8, 0.9], [0.6, 0.3], [0.5, 0.4]]))
    assert agreement.same_L.tolist() == [3.0] and agreement.choices_L.tolist() == [4.0]  # 2 + 1 of 2 × 2
    assert agreement.fractions() == [0.75]


def test_measure_mode_counts_but_routes_freely():
    scores_NE = torch.tensor([[0.9, 0.8, 0.1, 0.2]])
    own = scores_NE.topk(2)
    agreement = RoutingAgreement(1, torch.device("cpu"))
    values, experts = RoutingReplay(torch.tensor([[[2, 3]]]), replay=False, agreement=agreement).route(
        0, scores_NE, own.values, own.indices)
    assert experts is own.indices and values is own.values
    assert agreement.fractions() == [0.0]


def test_replay_refuses_a_token_count_that_does_not_match():
    with pytest.raises(RuntimeError, match="layer slot 0 routes"):
        RoutingReplay(torch.zeros(1, 3, 2, dtype=torch.long), replay=True).route(
            0, torch.rand(4, 4), torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.long))


def test_router_order_follows_megatrons_token_layout():
    # [B=2, T=3, L=1, k=1] with value 10·b + t
    routing_BTLK = torch.tensor([[0, 1, 2], [10, 11, 12]])[:, :, None, None]
    flat = lambda **kw: router_order(routing_BTLK, **kw)[0, :, 0].tolist()  # noqa: E731
    assert flat(flattened=False, sequence_parallel_rank=None, tp_size=1) == [0, 10, 1, 11, 2, 12]  # [T, B]
    assert flat(flattened=True, sequence_parallel_rank=None, tp_size=1) == [0, 1, 2, 10, 11, 12]  # THD
    assert flat(flattened=False, sequence_parallel_rank=1, tp_size=2) == [11, 2, 12]  # SP chunk 1 of 2
    assert flat(flattened=True, sequence_parallel_rank=0, tp_size=3) == [0, 1]


# ------------------------------------------------------------------------------------------- on the model

@pytest.fixture(scope="module")
def demo_bf16():
    ensure_parallel_state()
    seed_everything(0)
    return build_model(preset("demo-moe"), dtype=torch.bfloat16)


def _prompts(count: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 20, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(count)]


def test_recorded_experts_equal_a_full_forwards_chunked_forked_and_preempted(demo_bf16):
    """fp32 (no rounding difference): the recording of every fed token equals what a plain full forward of
    prompt + completion[:-1] routes it to, through 3-token prefill chunks, forked samples and preemption."""
    seed_everything(0)
    model = build_model(preset("demo-moe"), dtype=torch.float32)
    prompts = _prompts(4)
    engine = Engine(model, max_batch_size=8, max_seq_len=24, record_routing=True,
                    cache=CacheConfig(block_size=4, num_blocks=12, max_tokens_per_step=3))
    completions = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=5))
    assert engine.stats.preemptions > 0  # the small cache makes it recompute some sequences
    for c in completions:
        ids = prompts[c.prompt_index] + c.token_ids[:-1]
        assert c.routing.shape == (len(ids), 1, 2)
        _, maps = routed_experts(model, lambda: model(torch.tensor([ids]), torch.arange(len(ids))[None], None))
        assert [set(row) for row in c.routing[:, 0].long().tolist()] == expert_sets(maps[0])


def _rollout(model, prompts, new_tokens=48):
    engine = Engine(model, max_batch_size=64, max_seq_len=64, record_routing=True)
    completions = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=new_tokens, seed=3))
    return [RolloutSample(prompts[c.prompt_index], c.token_ids, c.logprobs, 0.0, 0.0, False, c.prompt_index,
                          c.routing) for c in completions]


def test_replay_makes_the_bf16_training_forward_route_as_the_rollout_and_lowers_the_mismatch(demo_bf16):
    samples = _rollout(demo_bf16, _prompts(16))
    T = max(len(s.prompt_ids) + len(s.completion_ids) - 1 for s in samples)
    batches = micro_batches(samples, 16, T, pad_id=0, mask_truncated=False)
    results = {}
    for mode in (RoutingMode.MEASURE, RoutingMode.REPLAY):
        control = routing_control(demo_bf16)
        control.mode, control.agreement = mode, RoutingAgreement(1, torch.device("cpu"))
        logps, maps = routed_experts(demo_bf16, lambda: forward_logprobs(demo_bf16, batches, 1.0))
        agreement = control.agreement
        control.mode, control.agreement = RoutingMode.OFF, None
        diff = torch.cat([(lp - mb.extras["old_logprobs"])[mb.loss_mask.bool()].abs()
                          for lp, mb in zip(logps, batches)])
        results[mode] = (diff, agreement)
        # the experts the forward really used, per token, against the recording
        known, same = replayed_counts(demo_bf16, batches, maps)
        if mode is RoutingMode.REPLAY:
            assert same == known  # every recorded token routed exactly as in the rollout
        else:
            assert same < known  # bf16: the free training forward picks other experts for some tokens
    (free, agree_free), (replayed, agree_replay) = results[RoutingMode.MEASURE], results[RoutingMode.REPLAY]
    # the counts are of the router's own choice, before replay: the same in both modes
    assert agree_free.fractions() == agree_replay.fractions() and agree_free.fractions()[0] < 1.0
    assert replayed.max() < free.max() and replayed.mean() < free.mean()


def test_packed_micro_batches_carry_the_routing_at_each_tokens_position(demo_bf16):
    samples = _rollout(demo_bf16, _prompts(3), new_tokens=6)
    batches = packed_micro_batches(samples, 1, 64, pad_id=0, mask_truncated=False, loss_agg=LossAgg.TOKEN_MEAN,
                                   norm_length=6)
    by_input = {}
    for s in samples:
        by_input.setdefault(tuple(s.prompt_ids + s.completion_ids[:-1]), []).append(s.routing)
    seen = 0
    for mb in batches:
        assert mb.extras["routing"].dtype == torch.int16
        assert bool((mb.extras["routing"][mb.segment_ids == 0] == -1).all())  # padding: no experts
        for b in range(mb.shape[0]):
            for segment in mb.segment_ids[b].unique().tolist():
                if segment == 0:
                    continue
                at_T = mb.segment_ids[b] == segment
                candidates = by_input[tuple(mb.input_ids[b][at_T].tolist())]
                assert any(torch.equal(mb.extras["routing"][b][at_T], r.to(torch.int16)) for r in candidates)
                seen += 1
    assert seen == len(samples)
    padded = batches[0].pad_to(batches[0].shape[1] + 3)
    assert bool((padded.extras["routing"][:, -3:] == -1).all())


def test_the_docs_example_records_and_replays():
    from tests.doc_examples import doc_examples

    ensure_parallel_state()
    seed_everything(0)
    exec(doc_examples("moe_rl.md")["record-and-replay"], {})
