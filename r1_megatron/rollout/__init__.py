"""In-process generation with the trainer's own model: `Engine(model, ...).generate(prompts, SamplingParams)`.

engine.py (the API), cache_config.py (the paged KV cache's settings), block_manager.py (which cache blocks each
sequence holds, shared prompt blocks), scheduler.py (continuous batching: token budget, chunked prefill,
preemption), model_runner.py (one flat forward per step), request.py (a request added one at a time and what step() reports
about it), top_logprobs.py (OpenAI-style top logprobs), sampler.py (temperature, top-k, top-p, seeded Gumbel-max, logprobs), sequence.py (requests and
completions); the KV cache itself is models/kv_cache.py, as the model's attention uses it.
"""
from .cache_config import CacheConfig
from .engine import Engine
from .generation_stats import GenerationStats
from .logprob_mismatch import LogprobMismatch, logprob_mismatch
from .sampler import SampleOutput, SamplingBatch, completion_seeds, request_seeds, sample
from .request import RequestOutput, SampleDelta
from .sampling_params import SamplingParams
from .sequence import Completion, FinishReason

__all__ = ["CacheConfig", "Completion", "Engine", "FinishReason", "GenerationStats", "LogprobMismatch", "RequestOutput",
           "SampleDelta", "SampleOutput", "SamplingBatch",
           "SamplingParams", "completion_seeds", "logprob_mismatch", "request_seeds", "sample"]
