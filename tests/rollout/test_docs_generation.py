"""The worked example of docs/generation.md runs as written, and does what its text says."""
from tests.doc_examples import doc_examples


def test_the_tight_cache_example_preempts_and_keeps_the_tokens():
    scope = {}
    exec(doc_examples("generation.md")["tight-cache"], scope)  # its own assert: the roomy pool's tokens
    stats = scope["tight"].stats
    assert stats.preemptions > 0 and stats.peak_blocks_used <= 15
    assert scope["roomy"] and len(scope["out"]) == 16


def test_the_requests_example_aborts_one_sample_and_finishes_the_rest():
    scope = {}
    exec(doc_examples("generation.md")["requests"], scope)
    text = scope["text"]
    assert len(text[("0", 0)]) == 12 - 3 and len(text[("1", 0)]) == 12 - 1  # the rest after the first steps
    assert text[("1", 1)] == []  # its one token came in step 3's report, not collected; the abort adds none
