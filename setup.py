"""Install r1_megatron; the top-level kernels/ folder is installed as r1_megatron.kernels.

CUDA C++ extensions in csrc/ are built only where both a CUDA toolchain and a CUDA-enabled torch are
importable at build time (use `pip install --no-build-isolation` on GPU machines so the build sees your torch);
everywhere else one line says they were skipped and the pure Triton/PyTorch paths are used.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

NAME = "r1_megatron"


def _cuda_extensions():
    """Return (ext_modules, cmdclass) for csrc/, or ([], {}) with a one-line reason when it cannot be built."""
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("r1_megatron: skipped csrc/ CUDA extensions (torch is not importable in the build environment; "
              "use pip install --no-build-isolation)")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        print(f"r1_megatron: skipped csrc/ CUDA extensions (torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
        return [], {}
    ext = CUDAExtension(
        name=f"{NAME}._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-std=c++20"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()

setup(
    name=NAME,
    version="0.1.0",
    description="DeepSeek-R1-style reasoning RL (GRPO) on Megatron-Core with fused Triton kernels",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",  # as DeepSeek-R1's code and weights
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=[NAME, *(f"{NAME}.{p}" for p in find_packages(NAME)), f"{NAME}.kernels"],
    package_dir={NAME: NAME, f"{NAME}.kernels": "kernels"},
    package_data={NAME: ["py.typed", "grpo/recipes/*.yaml", "sft/recipes/*.yaml", "evaluation/recipes/*.yaml",
                         "sampling/recipes/*.yaml", "pipeline/recipes/*.yaml", "evaluation/benchmarks.yaml",
                         "evaluation/data/*.jsonl", "evaluation/data/*.csv"]},
    install_requires=[
        "torch>=2.4",
        "megatron-core==0.16.1",  # the CPU compatibility layer patches this exact version's internals
        "triton>=3.0; platform_system == 'Linux'",
        "sentencepiece",
        "tokenizers",
        "safetensors",
        "numpy",
        "psutil",  # megatron dist_checkpointing needs it at save time
        "pyyaml",
        "math-verify>=0.7",
        "pyarrow",
        "tensorboard>=2.10",  # run metrics (MetricsLogger); tested with 2.21.0
        "matplotlib>=3.5",  # r1-megatron plot; tested with 3.11.2
        "tqdm>=4.60",  # the training progress bar
        "fastapi>=0.110",  # r1-megatron serve (the OpenAI-compatible server); tested with 0.165.0
        "uvicorn>=0.29",  # its ASGI server; tested with 0.54.0
        "gguf>=0.10",  # r1-megatron export --format gguf (llama.cpp's own writer); tested with 0.19.0
    ],
    extras_require={
        # the official openai client talks to r1-megatron serve; llama-cpp-python (built from source, ~4 min on
        # 2 cores) loads the GGUF exports
        # accelerate: `transformers serve`, the peer benchmarks/bench_serve.py's smoke test starts, needs it
        "test": ["pytest>=7", "transformers>=5.0", "openai>=1.0", "llama-cpp-python==0.3.36", "accelerate"],
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        # benchmarks/ peers: TRL (bench_grpo_step.py, bench_sft.py); 1.16.0 is the release tested with
        # transformers 5.24 and torch 2.13 (it brings accelerate and datasets). lm-evaluation-harness
        # (bench_eval.py): 0.4.13 tested with the same transformers and torch (its python-dateutil<3 pin via
        # pytablewriter's typepy moves dateutil back to 2.9.0.post0, which pandas and matplotlib accept)
        # lm-eval's [api] extra: its local-completions model (benchmarks/lm_eval_server_check.py)
        "bench": ["liger-kernel", "trl==1.16.0", "lm-eval[api]==0.4.13"],
    },
    entry_points={"console_scripts": ["r1-megatron = r1_megatron.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
