"""Evaluation with DeepSeek-R1's protocol: `r1-megatron eval` (command.py) and evaluation inside training
(training_eval.py).

benchmark_suite.py (benchmark definitions and their questions), scorers.py (how a benchmark's samples are judged
and their answers compared), metrics.py (pass@1, pass@k, cons@k), evaluator.py (k samples per question through
the engine, data parallel), sample_store.py (samples.jsonl, resumable), report.py (results.json, the table),
rescoring.py (`--samples`), config.py, model_loading.py. docs/evaluation.md describes it all.
"""
