"""Benchmarks: `python -m hardlabel_jax.benchmarks.<name> [--quick] [--out FILE]`.

`train_step` (JAX vs PyTorch examples/s of the HL, SL, SL+KD and HALD steps), `pipeline` (Grain
crops/s against the train step's consumption), `relabel` and `score` (images/s and peak memory
at three data-set sizes). Each prints a table and writes the same numbers as JSON.
"""

from hardlabel_jax import cpu_backend

# Every benchmark runs as `python -m hardlabel_jax.benchmarks.<name>`, which imports this package
# first: the library's XLA:CPU flags are in place before any benchmark starts JAX's backend.
cpu_backend.configure()
