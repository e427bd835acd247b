"""The routing-replay scenario of tests/parallel/worker.py: record while generating, replay in the training
forward, at a parallel layout."""
from __future__ import annotations

from pathlib import Path

import torch

from r1_megatron.grpo.logprob_pass import forward_logprobs
from r1_megatron.grpo.rollout_batch import RolloutSample, micro_batches
from r1_megatron.models import load_hf
from r1_megatron.models.routing_replay import RoutingAgreement, RoutingMode, moe_routers, routing_control
from r1_megatron.parallel import initialize
from r1_megatron.rollout import Engine, SamplingParams
from r1_megatron.runtime import seed_everything
from tests.models.routing_capture import replayed_counts, routed_experts


def replay_scenario(workdir: Path, layouts: str, layout_kwargs: dict, dp) -> dict:
    """Per layout, in bf16: this DP rank's rollout with recorded routing, then forward_logprobs replaying it.
    Reports the tokens with a recorded expert set, how many of them the replayed forward routed to exactly that
    set (per router call, matched by position in the router's token order), and the free-routing agreement."""
    out = {}
    for layout in layouts.split(","):
        initialize(**layout_kwargs[layout])
        seed_everything(0)
        model = load_hf(workdir / "ckpts" / "dsv3", dtype=torch.bfloat16)
        dp_rank, _ = dp()
        g = torch.Generator().manual_seed(10 + dp_rank)
        prompts = [torch.randint(0, 160, (3 + i,), generator=g).tolist() for i in range(4)]
        engine = Engine(model, max_batch_size=16, max_seq_len=48, record_routing=True)
        completions = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=7))
        samples = [RolloutSample(prompts[c.prompt_index], c.token_ids, c.logprobs, 0.0, 0.0, False, c.prompt_index,
                                 c.routing) for c in completions]
        batches = micro_batches(samples, 4, 32, pad_id=0, mask_truncated=False)
        control = routing_control(model)
        control.mode, control.agreement = RoutingMode.REPLAY, RoutingAgreement(len(moe_routers(model)), "cpu")
        _, maps = routed_experts(model, lambda: forward_logprobs(model, batches, 1.0))
        known, same = replayed_counts(model, batches, maps)
        out[layout] = {"layers": len(moe_routers(model)), "router_calls": len(maps), "known": known, "same": same,
                       "agreement": control.agreement.fractions()}
        control.mode, control.agreement = RoutingMode.OFF, None
    return out

