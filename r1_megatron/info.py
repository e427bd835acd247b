"""`r1-megatron info`: versions, device, and which optional backends this machine has."""
from __future__ import annotations

import importlib.metadata
import platform

from r1_megatron.models.attention import installed

_PACKAGES = ("torch", "megatron-core", "triton", "transformers", "safetensors", "tokenizers", "sentencepiece",
             "math-verify")
_OPTIONAL = {"transformer_engine": "TransformerEngine (fused attention)", "flash_attn": "flash-attn",
             "liger_kernel": "Liger-Kernel (benchmarks)"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        return f"cuda: {torch.cuda.device_count()} x {', '.join(sorted(names))} (CUDA {torch.version.cuda})"
    return f"cpu: {torch.get_num_threads()} threads (no CUDA; Megatron runs through r1_megatron.cpu_compat + gloo)"


def collect() -> dict:
    import torch

    from r1_megatron import __version__

    extension = installed("r1_megatron._C")
    return {
        "r1_megatron": __version__,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "device": _device(),
        "optional backends": {label: installed(mod) for mod, label in _OPTIONAL.items()},
        "attention": "TransformerEngine" if torch.cuda.is_available() and installed("transformer_engine")
                     else "torch scaled_dot_product_attention",
        "csrc extension (r1_megatron._C)": "built" if extension else "not built (needs nvcc + CUDA torch at install)",
    }


def main(args) -> int:
    for key, value in collect().items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, item in value.items():
                print(f"  {name:38s} {'yes' if item is True else 'no' if item is False else item}")
        else:
            print(f"{key}: {value}")
    return 0
