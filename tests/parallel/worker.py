"""Multi-process test scenarios, run by tests/parallel/launch.py under torchrun.

usage: worker.py SCENARIO WORKDIR [ARGS...]; each rank writes WORKDIR/SCENARIO-rank{R}.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from r1_megatron.models import load_hf, logits
from r1_megatron.parallel import initialize
from r1_megatron.runtime import seed_everything

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
LAYOUTS = {  # name -> initialize() kwargs
    "tp2": dict(tp=2), "ep2": dict(ep=2), "tp2ep2": dict(tp=2, ep=2, etp=1), "pp2": dict(pp=2),
    "pp2ep2": dict(pp=2, ep=2, etp=1), "dp2": dict(), "tp1": dict(),
}


def logits_scenario(workdir: Path, layouts: str) -> dict:
    """For each layout and each checkpoint in workdir/ckpts: max |logits - single-process logits| and bytes read."""
    out = {}
    for layout in layouts.split(","):
        initialize(**LAYOUTS[layout])
        seed_everything(0)
        for ckpt in sorted((workdir / "ckpts").iterdir()):
            ref = torch.load(workdir / f"{ckpt.name}.ref.pt")
            stats = {}
            model = load_hf(ckpt, reader_stats=stats)
            diff = max((logits(model, ids) - want).abs().max().item() for ids, want in zip(ref["ids"], ref["logits"]))
            out[f"{layout}/{ckpt.name}"] = {"max_diff": diff, "bytes_read": stats["bytes_read"]}
    return out


SCENARIOS = {"logits": logits_scenario}

if __name__ == "__main__":
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    result = SCENARIOS[scenario](workdir, *sys.argv[3:])
    (workdir / f"{scenario}-rank{RANK}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
