"""The generation engine: vLLM's `generate(prompts, SamplingParams)` on the trainer's own Megatron model.

The engine holds the model object the trainer trains (DDP / Float16Module wrappers are looked through), so it
reads the very parameter tensors the optimizer updates: there is no weight copy to sync or to go stale.

    engine = Engine(model, max_batch_size=64, max_seq_len=4096, eos_token_ids=[tok.eos_id])
    with engine.generating():            # eval mode, SP off, KV cache allocated; all restored/freed on exit
        completions = engine.generate(prompt_ids, SamplingParams(n=16, temperature=1.0, max_new_tokens=1024))

Requests can also join and leave one at a time (continuous batching over the same cache), as a server needs:

    with engine.generating():
        rid = engine.add_request(prompt_ids, SamplingParams(max_new_tokens=64))
        while engine.has_unfinished_requests:
            for out in engine.step():        # RequestOutput: each sample's new tokens, finish reason once
                ...
        engine.abort(rid)                    # or stop early; `for out in engine.stream(rid)` follows one request

generate() is a loop over the same add_request/step.

The KV cache is paged (models/kv_cache.py, rollout/block_manager.py): CacheConfig sets its block size and its
size (a block count or a fraction of free device memory); the n samples of a prompt share the prompt's blocks;
when blocks run out a running sequence is preempted and recomputed later (rollout/scheduler.py).

Parallelism: every rank of a tensor-parallel and of a pipeline-parallel group must pass the same prompts and
params (checked by generate(); add_request/abort/step must be called identically on those ranks, unchecked); ranks that differ only in data parallelism may pass different prompts. With expert parallelism,
ranks step in lockstep (an all-reduce over the expert-parallel group per step) and a rank whose work is done runs
one-token idle forwards while its peers finish, since every EP rank must enter each MoE all-to-all. With pipeline
parallelism every stage runs the same scheduler; a step's sequences go through the stages as micro-batches, the
last stage samples and broadcasts the tokens (rollout/pipeline_stages.py), and the tokens equal one process's.
"""
from __future__ import annotations

import contextlib
import hashlib
import numbers
from typing import Sequence as Seq

import torch
from megatron.core import parallel_state
from megatron.core.transformer.utils import set_model_to_sequence_parallel

from r1_megatron.models.kv_cache import KVCache
from r1_megatron.models.routing_replay import RoutingRecorder, routing_session
from r1_megatron.training.step import unwrap

from .block_manager import BlockManager
from .cache_config import CacheConfig
from .decode_graphs import GraphConfig, StaticDecode, static_decode
from .generation_stats import GenerationStats
from .model_runner import ModelRunner
from .pipeline_stages import PipelineStages
from .request import Request, RequestOutput
from .sampler import request_seeds
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Completion, FinishReason, Sequence


class Engine:
    def __init__(self, model, *, max_batch_size: int, max_seq_len: int, eos_token_ids: Seq[int] = (), seed: int = 0,
                 cache: CacheConfig | None = None, graphs: GraphConfig | None = None,
                 pipeline_micro_batches: int | None = None, record_routing: bool = False):
        """model: a model from load_hf/build_model, or the trainer's DDP-wrapped one; max_batch_size: sequences
        decoded together; max_seq_len: prompt + completion tokens per sequence; eos_token_ids: tokens that end
        every completion ("stop"); seed: seeds the draw of request seeds for unseeded params; cache: the paged
        KV cache's settings (default: room for max_batch_size sequences of max_seq_len, never preempting);
        graphs: CUDA-graph decode (rollout/decode_graphs.py; on by default on GPU, eager on CPU);
        pipeline_micro_batches: with pipeline parallelism, the micro-batches a step is cut into (default: the
        pipeline size, so that every stage has one to work on); record_routing: each Completion carries the
        experts its tokens were routed to (`routing`, for routing replay in training: models/routing_replay.py)."""
        checks = [("max_batch_size", max_batch_size, 1), ("max_seq_len", max_seq_len, 2)]
        if pipeline_micro_batches is not None:
            checks.append(("pipeline_micro_batches", pipeline_micro_batches, 1))
        for name, value, low in checks:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(f"Engine: {name} must be an int >= {low}, got {value!r}")
        self.model = unwrap(model)
        self.max_batch_size, self.max_seq_len = int(max_batch_size), int(max_seq_len)
        self.eos_token_ids = frozenset(_token_ids("eos_token_ids", eos_token_ids))
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(self.model.parameters()).device
        self.cache_config = cache or CacheConfig()
        self.num_blocks = self._same_across_model_parallel(
            self.cache_config.num_blocks_for(self.model, self.max_batch_size, self.max_seq_len))
        self.max_tokens_per_step = self.cache_config.tokens_per_step(self.max_batch_size)
        self.graph_config = graphs or GraphConfig()
        self.cache: KVCache | None = None
        self.static_decode: StaticDecode | None = None  # lives as long as the cache: graphs hold its addresses
        self.stats = GenerationStats()  # of the last generate() call, or of the steps since generating() began
        self.requests: dict[str, Request] = {}  # live requests, in arrival order
        self._scheduler: Scheduler | None = None  # these three live as long as the cache
        self._blocks: BlockManager | None = None
        self._runner: ModelRunner | None = None
        self._next_request = 0
        pp = parallel_state.get_pipeline_model_parallel_world_size() \
            if parallel_state.model_parallel_is_initialized() else 1
        self.pipeline = PipelineStages(self.model, self.device, int(pipeline_micro_batches or pp)) if pp > 1 else None
        # the recorder's buffer takes any forward's tokens: a step's, a decode bucket's, an idle forward's one
        self.recorder = RoutingRecorder(self.model, max(self.max_tokens_per_step, self.max_batch_size), self.device) \
            if record_routing else None

    def parameters(self):
        """The tensors generation reads: the model's own parameters."""
        return self.model.parameters()

    @contextlib.contextmanager
    def generating(self, offload=None):
        """Switch the model to generation: eval mode, sequence parallelism off, a KV cache allocated. On exit the
        cache is freed and the training mode and sequence-parallel setting are restored exactly.
        offload: a training.offload.HostOffload, whose optimizer state and gradient buffers are kept in host
        memory during generation (GPU memory for the KV cache) and moved back on exit."""
        if self.cache is not None:
            raise RuntimeError("Engine.generating() is already active")
        was_training, was_sp = self.model.training, self.model.config.sequence_parallel
        self.model.eval()
        if was_sp:  # decode steps have one token per row: nothing to split over the sequence
            set_model_to_sequence_parallel(self.model, False)
        self.cache = KVCache(self.num_blocks, self.cache_config.block_size, mla_latent=self.cache_config.mla_latent)
        recording = routing_session(self.model, self.recorder) if self.recorder is not None \
            else contextlib.nullcontext()
        recording.__enter__()  # before the decode graphs are captured: they record too
        # pipeline stages pass exact token counts to each other: no bucket padding there
        self.static_decode = None if self.pipeline is not None else static_decode(
            self.model, self.cache, self.max_batch_size, -(-self.max_seq_len // self.cache_config.block_size),
            self.max_seq_len, self.graph_config, self.device)
        self._blocks = BlockManager(self.num_blocks, self.cache_config.block_size)
        self._scheduler = Scheduler(self._blocks, self.max_batch_size, self.max_tokens_per_step)
        self._runner = ModelRunner(self.model, self.cache, self.device, self.max_batch_size, self.max_seq_len,
                                   self.static_decode, self.recorder)
        self.stats, self.requests = GenerationStats(), {}
        try:
            with offload if offload is not None else contextlib.nullcontext():
                yield self
        finally:
            if self.pipeline is not None:
                self.pipeline.release()
            self.cache.free()
            recording.__exit__(None, None, None)
            self.cache = self.static_decode = self._blocks = self._scheduler = self._runner = None
            self.requests = {}
            if was_sp:
                set_model_to_sequence_parallel(self.model, True)
            self.model.train(was_training)

    def generate(self, prompt_token_ids: Seq[Seq[int]],
                 params: SamplingParams | Seq[SamplingParams] = SamplingParams()) -> list[Completion]:
        """The n completions of every prompt, prompt by prompt, completion j of a prompt at position j within its
        prompt's n. params: one SamplingParams for all prompts, or one per prompt. Requests added with
        add_request and still running advance too (their outputs wait for the next step())."""
        if self.cache is None:
            with self.generating():
                return self.generate(prompt_token_ids, params)
        prompts = self._check_prompts(prompt_token_ids)
        per_prompt = self._per_prompt_params(params, len(prompts))
        self._check_same_across_model_parallel(prompts, per_prompt)
        self.stats, self._scheduler.num_preemptions = GenerationStats(), 0
        first = self._next_request
        requests = [self._add(prompt, p, f"generate-{first}-{i}", i)
                    for i, (prompt, p) in enumerate(zip(prompts, per_prompt))]
        while self._advance():
            pass
        for request in requests:
            del self.requests[request.request_id]
        return [seq.completion() for request in requests for seq in request.sequences]

    def add_request(self, prompt_token_ids: Seq[int], params: SamplingParams = SamplingParams(),
                    request_id: str | None = None) -> str:
        """Queue one prompt's params.n samples; they join the running batch at the next step() with room.
        Returns the request's id (request_id, or "0", "1", ... by arrival). ValueError for a bad prompt or an id
        already live; needs generating()."""
        self._require_generating("add_request")
        prompt = self._check_prompts([prompt_token_ids], "add_request")[0]
        if not isinstance(params, SamplingParams):
            raise ValueError(f"add_request: params must be a SamplingParams, got {type(params).__name__}")
        if request_id is None:
            request_id = str(self._next_request)
        if not isinstance(request_id, str) or request_id in self.requests:
            raise ValueError(f"add_request: request_id must be a str not already running, got {request_id!r}")
        return self._add(prompt, params, request_id, self._next_request).request_id

    def step(self) -> list[RequestOutput]:
        """One scheduler step over every running request; returns a RequestOutput for each request with news
        (new tokens, or samples that finished), in arrival order. Finished requests are then forgotten."""
        self._require_generating("step")
        self._advance()
        return self._reports(list(self.requests.values()))

    def abort(self, request_id: str, index: int | None = None) -> bool:
        """Finish the request's unfinished samples (or only sample `index`) with FinishReason.ABORT and free
        their cache blocks; the next step() reports them. False when no such request is running."""
        self._require_generating("abort")
        request = self.requests.get(request_id)
        if request is None:
            return False
        n = len(request.sequences)
        if index is not None and not (isinstance(index, numbers.Integral) and 0 <= index < n):
            raise ValueError(f"abort: index must be in [0, {n}), got {index!r}")
        chosen = request.sequences if index is None else [request.sequences[index]]
        for seq in reversed(chosen):  # siblings before their leader: the leader then has none to hand over
            if not seq.finished:
                leader = next((s for s in request.sequences if seq in s.siblings), None)
                self._scheduler.abort(seq, leader)
                seq.finish_reason = FinishReason.ABORT
        return True

    def stream(self, request_id: str):
        """Step the engine until request_id finishes, yielding its RequestOutputs. The other requests advance
        too; their news comes back from the next step()."""
        self._require_generating("stream")
        request = self.requests.get(request_id)
        if request is None:
            raise ValueError(f"stream: no running request {request_id!r}")
        while not request.finished:
            self._advance()
            yield from self._reports([request])

    @property
    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------------------------------- helpers

    def _add(self, prompt: list[int], params: SamplingParams, request_id: str, prompt_index: int) -> Request:
        request = Request(request_id, prompt, params, self._sequences(prompt_index, prompt, params))
        self._scheduler.add(request.sequences)
        self.requests[request_id] = request
        self._next_request += 1
        return request

    def _advance(self) -> bool:
        """One step of the scheduler; False (and no forward) when no rank of the lockstep groups has work."""
        scheduler, runner = self._scheduler, self._runner

        def record(plan):
            self.stats.record(plan, scheduler, self._blocks)

        # inference mode, not just no_grad: no version counters or autograd metadata on any tensor of the loop
        # (~15% of a small model's CPU decode step); the cache pools are allocated and written only in here
        with torch.inference_mode():
            if self.pipeline is not None:
                return self.pipeline.step(scheduler, runner, record)
            if not self._any_rank_has_work(scheduler.has_work):
                return False
            plan = scheduler.schedule()
            if plan is None:
                runner.idle_forward()
                return True
            record(plan)
            logits_RV = runner.forward(plan)
            runner.sample(logits_RV, scheduler.computed(plan))
            scheduler.release_finished()
        return True

    def _reports(self, requests: list[Request]) -> list[RequestOutput]:
        outputs = [out for out in (r.report() for r in requests) if out is not None]
        for out in outputs:
            if out.finished:
                del self.requests[out.request_id]
        return outputs

    def _require_generating(self, name: str) -> None:
        if self.cache is None:
            raise RuntimeError(f"Engine.{name} needs the KV cache: call it inside `with engine.generating():`")

    def _sequences(self, prompt_index: int, prompt: list[int], params: SamplingParams) -> list[Sequence]:
        stop = self.eos_token_ids | frozenset(params.stop_token_ids)
        return [Sequence(prompt_index, j, prompt, params, seed, stop)
                for j, seed in enumerate(request_seeds(params, self.generator))]

    def _check_prompts(self, prompt_token_ids, caller: str = "generate") -> list[list[int]]:
        if isinstance(prompt_token_ids, (str, bytes)) or not hasattr(prompt_token_ids, "__iter__"):
            raise ValueError(f"{caller}: prompt_token_ids must be a list of token-id lists, got "
                             f"{type(prompt_token_ids).__name__}")
        prompts = [_token_ids(f"prompt_token_ids[{i}]", p) for i, p in enumerate(prompt_token_ids)]
        vocab = self.model.model_config.vocab_size
        empty = [i for i, p in enumerate(prompts) if not p]
        too_long = [i for i, p in enumerate(prompts) if len(p) > self.max_seq_len - 1]
        out_of_vocab = [i for i, p in enumerate(prompts) if p and max(p) >= vocab]
        for what, bad in (("are empty", empty), (f"are longer than max_seq_len - 1 = {self.max_seq_len - 1} "
                          "tokens", too_long), (f"have token ids >= the vocabulary size {vocab}", out_of_vocab)):
            if bad:
                raise ValueError(f"{caller}: prompts {bad} {what}")
        return prompts

    @staticmethod
    def _per_prompt_params(params, num_prompts: int) -> list[SamplingParams]:
        if isinstance(params, SamplingParams):
            return [params] * num_prompts
        params = list(params)
        if len(params) != num_prompts or not all(isinstance(p, SamplingParams) for p in params):
            raise ValueError(f"generate: params must be one SamplingParams or one per prompt ({num_prompts}), got "
                             f"{len(params)} items")
        return params

    def _check_same_across_model_parallel(self, prompts, params) -> None:
        """TP ranks compute one model together, and pipeline stages run one scheduler each on the same requests:
        different inputs would silently mix (or hang)."""
        digest = hashlib.sha256(repr((prompts, params, self.generator.get_state().tolist())).encode()).digest()
        for name, group in _model_parallel_groups():
            mine = torch.tensor(list(digest[:8]), dtype=torch.int64, device=self.device)  # NCCL: device tensors
            low, high = mine.clone(), mine.clone()
            torch.distributed.all_reduce(low, torch.distributed.ReduceOp.MIN, group=group)
            torch.distributed.all_reduce(high, torch.distributed.ReduceOp.MAX, group=group)
            if not torch.equal(low, high):
                raise ValueError(f"generate: {name} ranks passed different prompts, params or engine seeds; every "
                                 f"rank of a {name} group must generate the same requests")

    def _same_across_model_parallel(self, num_blocks: int) -> int:
        """The smallest block count of the TP and PP groups: each stage sizes its pool from its own layers and
        free memory (memory_fraction), but the ranks' schedulers must see one pool size."""
        count_1 = torch.tensor([num_blocks], dtype=torch.int64, device=self.device)
        for _, group in _model_parallel_groups():
            torch.distributed.all_reduce(count_1, torch.distributed.ReduceOp.MIN, group=group)
        return int(count_1.item())

    def _any_rank_has_work(self, has_work: bool) -> bool:
        if not parallel_state.model_parallel_is_initialized() or \
                parallel_state.get_expert_model_parallel_world_size() == 1:
            return has_work
        flag = torch.tensor([int(has_work)], device=self.device)
        # every rank of an expert-parallel group enters each MoE all-to-all; other groups need not wait
        torch.distributed.all_reduce(flag, torch.distributed.ReduceOp.MAX,
                                     group=parallel_state.get_expert_model_parallel_group())
        return bool(flag.item())


def _model_parallel_groups() -> list[tuple[str, object]]:
    """(name, group) of the tensor- and pipeline-parallel groups of more than one rank."""
    if not parallel_state.model_parallel_is_initialized():
        return []
    groups = [("tensor-parallel", parallel_state.get_tensor_model_parallel_world_size(),
               parallel_state.get_tensor_model_parallel_group),
              ("pipeline-parallel", parallel_state.get_pipeline_model_parallel_world_size(),
               parallel_state.get_pipeline_model_parallel_group)]
    return [(name, get()) for name, size, get in groups if size > 1]


def _token_ids(name: str, ids) -> list[int]:
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{name} must be a sequence of token ids, got {ids!r}")
    ids = list(ids)
    bad = [t for t in ids if not isinstance(t, numbers.Integral) or isinstance(t, bool) or t < 0]
    if bad:
        raise ValueError(f"{name} must hold non-negative ints, got {bad[:5]!r}")
    return [int(t) for t in ids]
