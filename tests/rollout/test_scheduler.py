"""The scheduler by hand, without a model: token budget, chunked prefill, decode rows first, forks sharing the
prompt's blocks, preemption of the newest running sequence, groups split over the sequence slots."""
from r1_megatron.rollout.block_manager import BlockManager
from r1_megatron.rollout.sampling_params import SamplingParams
from r1_megatron.rollout.scheduler import Scheduler
from r1_megatron.rollout.sequence import Sequence


def _group(prompt_index: int, prompt_len: int, n: int = 1, max_new_tokens: int = 100) -> list[Sequence]:
    params = SamplingParams(n=n, temperature=0, max_new_tokens=max_new_tokens)
    prompt = list(range(1, prompt_len + 1))
    return [Sequence(prompt_index, j, prompt, params, seed=j, stop_ids=frozenset()) for j in range(n)]


def _step(scheduler: Scheduler, token: int = 7):
    """One step as the engine runs it, with every sampled token `token`: [(prompt, sample, start, end)] chunks."""
    plan = scheduler.schedule()
    chunks = [(c.seq.prompt_index, c.seq.sample_index, c.start, c.end) for c in plan.chunks]
    for seq, _ in scheduler.computed(plan):
        seq.append(token, 0.0, max_seq_len=10_000)
    scheduler.release_finished()
    return chunks


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps():
    scheduler = Scheduler(BlockManager(num_blocks=64, block_size=4), max_num_seqs=4, max_tokens_per_step=6)
    scheduler.add(_group(0, 3))
    assert _step(scheduler) == [(0, 0, 0, 3)]  # prompt 0 prefilled whole, samples its first token
    scheduler.add(_group(1, 12))
    # prompt 0 decodes one token per step first; prompt 1 takes the rest of the 6-token budget each step
    assert _step(scheduler) == [(0, 0, 3, 4), (1, 0, 0, 5)]
    assert _step(scheduler) == [(0, 0, 4, 5), (1, 0, 5, 10)]
    assert _step(scheduler) == [(0, 0, 5, 6), (1, 0, 10, 12)]  # prompt 1 complete: it samples
    assert _step(scheduler) == [(0, 0, 6, 7), (1, 0, 12, 13)]  # both decode


def test_siblings_fork_when_the_prompt_is_computed_and_share_its_blocks():
    blocks = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_tokens_per_step=100)
    group = _group(0, 6, n=3)
    scheduler.add(group)
    assert _step(scheduler) == [(0, 0, 0, 6)]  # one prefill for the three samples
    assert [len(s.token_ids) for s in group] == [1, 1, 1]
    assert group[1].block_ids == group[2].block_ids == group[0].block_ids == [1, 2]
    assert blocks.ref_counts[1] == blocks.ref_counts[2] == 3
    # the next step writes position 6 into the shared, half-full block 2: two samples copy it, the last keeps it
    plan = scheduler.schedule()
    assert [(c.src, c.dst) for c in plan.copies] == [(2, 3), (2, 4)]
    assert [s.block_ids for s in group] == [[1, 3], [1, 4], [1, 2]]


def test_when_blocks_run_out_the_newest_running_sequence_is_preempted_and_recomputed():
    blocks = BlockManager(num_blocks=7, block_size=2)  # 6 usable blocks = 12 positions
    scheduler = Scheduler(blocks, max_num_seqs=4, max_tokens_per_step=100)
    first, second = _group(0, 4)[0], _group(1, 4)[0]
    scheduler.add([first])
    scheduler.add([second])
    assert _step(scheduler) == [(0, 0, 0, 4), (1, 0, 0, 4)]  # 2 + 2 blocks
    _step(scheduler)  # positions 4: 1 more block each, 6 in use
    assert blocks.num_free == 0
    _step(scheduler)  # position 5 fits in the blocks of position 4
    # position 6 needs a fourth block each: the newest (prompt 1) is preempted, its blocks freed
    assert _step(scheduler) == [(0, 0, 6, 7)]
    assert scheduler.num_preemptions == 1 and second.block_ids == [] and second.num_computed == 0
    assert list(scheduler.waiting) == [second] and len(second.token_ids) == 3  # it keeps its generated tokens
    first.params = SamplingParams(temperature=0, max_new_tokens=5)  # the first finishes at its next token
    # prompt 1 is recomputed (its 4 prompt tokens and 3 generated ones) with the 2 free blocks, then the rest
    # once the first has finished and freed its 4; the chunk that reaches its end samples its 4th token
    assert _step(scheduler) == [(0, 0, 7, 8), (1, 0, 0, 4)] and first.finished and blocks.num_free == 4
    assert _step(scheduler) == [(1, 0, 4, 7)] and len(second.token_ids) == 4


def test_a_group_larger_than_the_sequence_slots_is_split_and_each_part_prefilled_once():
    scheduler = Scheduler(BlockManager(num_blocks=64, block_size=4), max_num_seqs=2, max_tokens_per_step=100)
    scheduler.add(_group(0, 3, n=5, max_new_tokens=1))
    assert [(s.sample_index, [x.sample_index for x in s.siblings]) for s in scheduler.waiting] == \
        [(0, [1]), (2, [3]), (4, [])]
    assert _step(scheduler) == [(0, 0, 0, 3)]  # 2 slots: one part at a time (its samples finish at once)
    assert _step(scheduler) == [(0, 2, 0, 3)]
    assert _step(scheduler) == [(0, 4, 0, 3)]
    assert not scheduler.has_work and len(scheduler.free_rows) == 2
