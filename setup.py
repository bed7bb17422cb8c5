from setuptools import find_packages, setup

setup(
    name="zaya1",
    version="0.1.0",
    description="ZAYA1 inference: exact PyTorch reference path and an AWS Trainium2 (NxDI) backend",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"zaya1": ["published_configs/*/config.json"]},  # zaya1.family
    python_requires=">=3.10",
    # Install torch==2.13.0 first on CPU machines (README): an unpinned torch would pull the CUDA build.
    # numpy: torch's CPU wheel does not require it but warns "Failed to initialize NumPy" on import without it
    install_requires=["torch>=2.4", "numpy>=1.22", "safetensors>=0.4", "tokenizers>=0.19", "tqdm>=4.60"],
    # transformers < 5.40: the parity tests drive upstream's cache through past_key_values, removed in 5.40
    extras_require={
        "hf": ["transformers>=5.23,<5.40"],  # upstream ZayaForCausalLM: the CPU test reference and `zaya1 bench`
        # torch-mlir: the native vLLM-Neuron compile route's StableHLO import (test_vllm_native_compile);
        # compressed-tensors: writes the quantized-expert test checkpoints and dequantizes transformers' reference
        "test": ["pytest>=7", "transformers>=5.23,<5.40", "torch-mlir==20261001; platform_machine == 'x86_64'",
                 "compressed-tensors>=0.20"],
        # Neuron: the SDK comes with the Neuron DLAMI's NxDI virtualenv, and NxDI pins transformers 4.57 (it fails
        # to import on 5.x), so these extras never name transformers or an SDK package: `pip install -e
        # ".[neuron-test]"` there finds everything else already installed and changes nothing (docs/vllm.md).
        "neuron": [],
        "neuron-test": ["pytest>=7"],
    },
    entry_points={
        "console_scripts": ["zaya1=zaya1.tools.cli:main"],
        # run by vLLM in each of its processes: the native model or the NxDI one (docs/vllm-neuron.md, vllm.md)
        "vllm.general_plugins": ["zaya1=zaya1.vllm_plugin:register"],
    },
)
