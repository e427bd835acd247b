"""In-process generation with the trainer's own model: sampling settings and the sampler (more to come:
engine, scheduler, KV cache)."""
from .sampler import SampleOutput, SamplingBatch, completion_seeds, request_seeds, sample
from .sampling_params import SamplingParams

__all__ = ["SampleOutput", "SamplingBatch", "SamplingParams", "completion_seeds", "request_seeds", "sample"]
