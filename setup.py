from pathlib import Path

from setuptools import find_packages, setup

extras = {
    "deepspeed": ["deepspeed>=0.16.0"],
    "track": ["wandb>=0.18", "swanlab>=0.4", "tensorboard>=2.17"],
    "gpu": ["flash-attn>=2.6"],
    "dev": [
        "ruff>=0.8",
        "pytest>=8.0",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.6",
        "psutil>=5.9",
        "openai>=1.40",
        "selenium>=4.20",
    ],
    "serve": ["fastapi>=0.135", "pydantic>=2.6", "uvicorn>=0.30"],
    "eval": ["lm-eval>=0.4.5"],
    # GGUF export: llama.cpp built from source (CPU, about 9 minutes on 2 cores); its converter imports sentencepiece.
    "export": ["llama-cpp-python>=0.3.36", "sentencepiece>=0.2"],
}

setup(
    name="miniminds",
    version="0.1.0",
    description="Train a small language model from scratch, HuggingFace-native: tokenizer, data, pretraining and beyond.",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_miniminds*", "data_process*", "recipes*"]),
    package_data={
        "recipes": ["configs/*.yaml", "lm_eval_tasks/*.yaml", "lm_eval_tasks/*.py"],
        "modeling_miniminds.serving": ["static/*.html"],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24",
        "trl>=1.16",
        "peft>=0.15",
        "accelerate>=1.2",
        "datasets>=3.0",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "datasketch>=1.6",
        "numpy>=1.26",
        "scipy>=1.11",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "miniminds-chat=modeling_miniminds.serving.chat:main",
            "miniminds-serve=modeling_miniminds.serving.serve:main",
            "miniminds-convert=modeling_miniminds.export.convert:main",
            "miniminds-merge-lora=modeling_miniminds.export.merge_lora:main",
        ]
    },
)
