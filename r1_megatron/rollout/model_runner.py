"""Runs the model for one scheduled step (rollout/scheduler.py) and samples the next tokens.

A step's tokens are one flat row with no padding: the decode rows (one token each) first, then the prefill
chunks, each sequence at its own positions (models/kv_cache.py). The host work per step is a handful of small
tensors built from Python lists in one call each; each sequence's block table lives in a persistent
[max_num_seqs, max_blocks] tensor, rewritten only for the rows whose blocks changed.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state

from r1_megatron.models.kv_cache import ForwardContext, KVCache, PrefillChunk, forward_context
from r1_megatron.models.routing_replay import RoutingRecorder

from .decode_graphs import StaticDecode
from .sampler import SamplingBatch
from .routing_trace import RoutingTrace
from .scheduler import Chunk, StepPlan
from .sequence import Sequence
from .top_logprobs import top_logprobs
from .vocab_parallel_sampling import sample_vocab_parallel


class ModelRunner:
    def __init__(self, model, cache: KVCache, device: torch.device, max_num_seqs: int, max_seq_len: int,
                 static_decode: StaticDecode | None = None, recorder: RoutingRecorder | None = None):
        """static_decode: the bucketed static-buffer decode path (CUDA graphs), used for decode-only steps whose
        batch fits a bucket; None decodes eagerly. recorder: the routing session set on the model's routers
        (models/routing_replay.py), whose experts each forward hands to its sequences' RoutingTraces."""
        self.model, self.cache, self.device, self.max_seq_len = model, cache, device, max_seq_len
        self.recorder = recorder
        self.vocab_size = model.model_config.vocab_size
        tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() \
            else 1
        self.tp_group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
        self.static_decode = static_decode
        self.block_size = cache.block_size
        max_blocks = -(-max_seq_len // self.block_size)
        self.block_table_RM = torch.zeros(max_num_seqs, max_blocks, dtype=torch.int32, device=device)
        self._table_rows: list[list[int]] = [[] for _ in range(max_num_seqs)]

    def forward(self, plan: StepPlan) -> torch.Tensor:
        out = self._forward(plan)
        if self.recorder is not None:
            self._record_routing(plan.chunks)
        return out

    def _forward(self, plan: StepPlan) -> torch.Tensor:
        """Logits [R, V / TP] of the chunks that sample, in plan order: this rank's vocab shard, never gathered
        (sample() combines the shards' partial results). On a pipeline stage before the last: the stage's hidden
        states [N, H] of the step's N tokens (rollout/pipeline_stages.py)."""
        if plan.copies:
            src, dst = zip(*((c.src, c.dst) for c in plan.copies))
            self.cache.copy_blocks(torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device))
        # one-token chunks (decode steps, or a prompt's last single token) attend exactly like decode rows
        decode = [c for c in plan.chunks if c.end - c.start == 1]
        prefill = plan.chunks[len(decode):]
        host_5D = self._decode_host(decode)
        if not prefill and self.static_decode is not None and self.static_decode.bucket(len(decode)) is not None \
                and all(c.samples for c in decode):
            return self.static_decode.run(host_5D, self.block_table_RM)
        ctx, ids_1N = self._context(decode, host_5D, prefill)
        with forward_context(ctx), torch.inference_mode():
            logits_R1V = self.model(ids_1N, ctx.positions_N[None], None, runtime_gather_output=False)
        return logits_R1V[:, 0]

    def _record_routing(self, chunks: list[Chunk]) -> None:
        """Each chunk's rows of the forward's routing (its tokens are consecutive, in plan order, in the flat
        row the model saw, and first in a padded decode bucket) into its sequence's trace."""
        rec = self.recorder
        rows_NLK = rec.rows(sum(c.end - c.start for c in chunks))
        offset = 0
        for c in chunks:
            if c.seq.routing is None:
                c.seq.routing = RoutingTrace(rec.num_layers, rec.topk, rec.dtype)
            c.seq.routing.write(c.start, rows_NLK[offset:offset + c.end - c.start])
            offset += c.end - c.start

    def sample(self, logits_RV: torch.Tensor, sampling: list[tuple[Sequence, int]]) -> None:
        """Append each sequence's next token, sampled from logits row r (siblings share their leader's row)."""
        if not sampling:
            return
        sequences, rows = zip(*sampling)
        if list(rows) != list(range(len(rows))):
            logits_RV = logits_RV[torch.tensor(rows, device=logits_RV.device)]
        batch = SamplingBatch.from_rows([s.params for s in sequences], [s.seed for s in sequences],
                                        [len(s.token_ids) for s in sequences], device=self.device)
        if self.tp_group is None:
            out = batch.sample(logits_RV)
        else:
            out = sample_vocab_parallel(logits_RV, batch, self.vocab_size, self.tp_group)
        tops = self._top_logprobs(logits_RV, batch, sequences)
        for seq, token, logprob, top in zip(sequences, out.tokens_B.tolist(), out.logprobs_B.tolist(), tops):
            seq.append(token, logprob, self.max_seq_len, top)

    def _top_logprobs(self, logits_RV, batch, sequences) -> list[list[tuple[int, float]]]:
        """Each row's params.logprobs most likely tokens (rollout/top_logprobs.py); [] for rows not asking.
        Every TP rank has the same sequences, so all of them enter the collective or none does."""
        k = max(s.params.logprobs for s in sequences)
        if k == 0:
            return [[] for _ in sequences]
        tops = top_logprobs(logits_RV, batch.temperature_B, k, self.vocab_size, self.tp_group)
        return [top[:s.params.logprobs] for top, s in zip(tops, sequences)]

    def idle_forward(self) -> None:
        """A one-token forward outside the cache, for a rank with nothing to generate whose expert-parallel peers
        still do (every rank of an EP group must enter each MoE all-to-all)."""
        ids_11 = torch.zeros(1, 1, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            self.model(ids_11, torch.zeros_like(ids_11), None, runtime_gather_output=False)

    # ------------------------------------------------------------------------------------------- helpers

    def _decode_host(self, decode: list[Chunk]) -> torch.Tensor:
        """int64 [5, D]: each decode row's token id, position, cache slot, block-table row and length (one
        host tensor per step); the rows' block tables are synced first."""
        S = self.block_size
        for c in decode:
            self._sync_row(c.seq)
        return torch.tensor([[c.seq.tokens(c.start, c.end)[0] for c in decode],
                             [c.start for c in decode],
                             [c.seq.block_ids[c.start // S] * S + c.start % S for c in decode],
                             [c.seq.row for c in decode],
                             [c.end for c in decode]], dtype=torch.int64).view(5, len(decode))

    def _context(self, decode: list[Chunk], host_5D: torch.Tensor, prefill: list[Chunk]):
        """The eager forward's ForwardContext and flat token ids [1, N]."""
        ids, positions, slots = host_5D[0].tolist(), [host_5D[1]], [host_5D[2]]
        fields = {}
        if decode:
            used_blocks = -(-max(c.end for c in decode) // self.block_size)  # the torch path reads every column
            fields = dict(num_decode=len(decode), seq_lens_D=host_5D[4].to(device=self.device, dtype=torch.int32),
                          block_table_DM=self.block_table_RM[host_5D[3].to(self.device), :used_blocks])
        chunks = []
        for chunk in prefill:
            chunks.append(self._prefill_chunk(chunk, len(ids)))
            ids += chunk.seq.tokens(chunk.start, chunk.end)
            positions.append(torch.arange(chunk.start, chunk.end))
            slots.append(self._slots(chunk))
        logit_index = [i for i, c in enumerate(decode) if c.samples]
        logit_index += [pc.end - 1 for pc, c in zip(chunks, prefill) if c.samples]
        ctx = ForwardContext(self.cache, torch.cat(positions).to(self.device), torch.cat(slots).to(self.device),
                             torch.tensor(logit_index, dtype=torch.int64, device=self.device), self.max_seq_len,
                             prefill=tuple(chunks), **fields)
        return ctx, torch.tensor(ids, dtype=torch.int64, device=self.device)[None]

    def _sync_row(self, seq: Sequence) -> None:
        if self._table_rows[seq.row] != seq.block_ids:
            self._table_rows[seq.row] = list(seq.block_ids)
            self.block_table_RM[seq.row, :len(seq.block_ids)] = torch.tensor(seq.block_ids, dtype=torch.int32)

    def _prefill_chunk(self, chunk: Chunk, start: int) -> PrefillChunk:
        blocks = torch.tensor(chunk.seq.block_ids[:-(-chunk.end // self.block_size)], device=self.device)
        return PrefillChunk(start, start + chunk.end - chunk.start, chunk.end, blocks)

    def _slots(self, chunk: Chunk) -> torch.Tensor:
        positions = torch.arange(chunk.start, chunk.end)
        blocks = torch.tensor(chunk.seq.block_ids)
        return blocks[positions // self.block_size] * self.block_size + positions % self.block_size
