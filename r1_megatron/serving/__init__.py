"""An OpenAI-compatible HTTP server on the generation engine (`r1-megatron serve`).

detokenizer.py (token ids -> streamed text), stop_strings.py (stop strings over streamed text), reasoning.py
(R1's <think>...</think> split into reasoning_content and content).
"""
