"""`r1-megatron pipeline`: the R1 pipeline's stages (existing commands) declared in one YAML recipe, run in one
process in order, resumable at stage level (docs/pipeline.md)."""
