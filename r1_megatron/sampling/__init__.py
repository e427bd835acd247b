"""Rejection sampling with DeepSeek-R1's readability filters: `r1-megatron sample` (command.py).

readability.py (the reasoning part, the filters' measures and the de-dup normaliser, pure functions),
selection.py (which samples are kept and how each filter counts), sample_file.py (OUT/samples.jsonl and its
ledger, resumable), config.py (SampleRunConfig). docs/sampling.md describes it all.
"""
