"""The engine generates with the trainer's own tensors: no copy, and a train step changes what it generates next."""
import torch

from r1_megatron.rollout import Engine, SamplingParams, logprob_mismatch
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.micro_batch import MicroBatch
from r1_megatron.training.offload import HostOffload
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.step import build_ddp, train_step

from .engine_fixtures import PROMPTS, forward_logprobs, load_pair, no_cache_greedy

GREEDY = SamplingParams(temperature=0, max_new_tokens=6)


def _trainer(tmp_path):
    _, model = load_pair("deepseek_v3", tmp_path)
    ddp = build_ddp(model)
    settings = OptimizerSettings(lr=3e-2, warmup_steps=0, clip_grad=1.0)
    optimizer = build_optimizer(ddp, settings)
    return ddp, optimizer, build_scheduler(optimizer, settings)


def _sft_on(completions) -> list[MicroBatch]:
    """One micro-batch that teaches each prompt a fixed continuation (all rows the same length)."""
    rows = [PROMPTS[c.prompt_index][-1:] + [(t + 1) % 160 for t in c.token_ids[:5]] for c in completions]
    ids = torch.tensor(rows)
    return [MicroBatch(ids[:, :-1], ids[:, 1:], torch.ones(ids.shape[0], ids.shape[1] - 1))]


def test_engine_reads_the_trainers_parameter_tensors(tmp_path):
    ddp, optimizer, _ = _trainer(tmp_path)
    engine = Engine(ddp, max_batch_size=4, max_seq_len=32)
    trainer_tensors = {p.data_ptr(): p for p in ddp.parameters()}
    engine_tensors = list(engine.parameters())
    assert engine_tensors and all(trainer_tensors.get(p.data_ptr()) is p for p in engine_tensors)
    assert len(engine_tensors) == len(trainer_tensors)
    # every weight that a generation forward touches is one of those tensors (forward hooks see the modules run)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.extend(mod.parameters(recurse=False)))
             for m in engine.model.modules()]
    engine.generate(PROMPTS[:2], GREEDY)
    for h in hooks:
        h.remove()
    assert seen and all(trainer_tensors.get(p.data_ptr()) is p for p in seen)


def test_a_train_step_after_generation_changes_the_next_generation(tmp_path):
    ddp, optimizer, scheduler = _trainer(tmp_path)
    engine = Engine(ddp, max_batch_size=4, max_seq_len=32)
    with engine.generating(offload=HostOffload(ddp, optimizer)):  # a no-op on CPU, exercised for the API
        before = engine.generate(PROMPTS, GREEDY)
    assert ddp.training  # generating() restored training mode
    result = train_step(ddp, optimizer, scheduler, _sft_on(before), next_token_cross_entropy)
    assert result.updated
    after = engine.generate(PROMPTS, GREEDY)
    model = engine.model
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    for c in after:  # the new tokens and logprobs are those of the updated weights
        assert c.token_ids == no_cache_greedy(model, PROMPTS[c.prompt_index], len(c.token_ids))
    rollout = torch.cat([torch.tensor(c.logprobs, dtype=torch.float64) for c in after])
    train = torch.cat([forward_logprobs(model, PROMPTS[c.prompt_index], c.token_ids) for c in after])
    assert logprob_mismatch(rollout, train).max_abs <= 1e-5
    stale = torch.cat([torch.tensor(c.logprobs, dtype=torch.float64) for c in before])
    assert (stale - torch.cat([forward_logprobs(model, PROMPTS[c.prompt_index], c.token_ids)
                               for c in before])).abs().max() > 1e-3
