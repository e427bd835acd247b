"""An OpenAI-compatible HTTP server on the generation engine (`r1-megatron serve`; docs/serving.md).

command.py (the CLI, model loading), app.py (FastAPI routes), protocol.py (request models, OpenAI error JSON),
engine_loop.py (the thread that owns the engine: bounded queue, rank-0 broadcast under torchrun),
generation_job.py (one HTTP request's engine requests and choices), sample_text.py (a choice's text, stop strings
and logprobs), responses.py (OpenAI response and chunk objects), http_server.py (uvicorn with the SIGTERM drain);
detokenizer.py (token ids -> streamed text), stop_strings.py (stop strings over streamed text), reasoning.py
(R1's <think>...</think> split into reasoning_content and content).
"""
