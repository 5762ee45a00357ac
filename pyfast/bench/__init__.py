"""Kernel benchmarks, installed with the package: one module per op family (``lif``, ``mesa``, ``wconv``, ``karat``,
``gated``, ``layers``, ``pld``) sharing :mod:`pyfast.bench.harness`.

Run one with ``python -m pyfast.bench.OP [--quick] [--device cpu|cuda] ...`` or all of them with ``pyfast bench``
(CSV and a bar chart per op under ``bench/results/``). Each compares pyfast's backends with the eager reference, the
reference under ``torch.compile`` and the outside peer where one exists, as ratios measured side by side in one run.
The GPU-machine tools that need a source checkout (``gpu_check.sh``, ``gpu_profile.py``, ``kernel_sweep.cu``) stay in
the repository's ``bench/`` directory.
"""
