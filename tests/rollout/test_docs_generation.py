"""The worked example of docs/generation.md runs as written, and does what its text says."""
from tests.doc_examples import doc_examples


def test_the_tight_cache_example_preempts_and_keeps_the_tokens():
    scope = {}
    exec(doc_examples("generation.md")["tight-cache"], scope)  # its own assert: the roomy pool's tokens
    stats = scope["tight"].stats
    assert stats.preemptions > 0 and stats.peak_blocks_used <= 15
    assert scope["roomy"] and len(scope["out"]) == 16
