"""Readable pure-PyTorch definitions of every op family: the truth the kernels are tested and benchmarked against.

One module per family (``lif``, ``mesa``, ``wconv``, ``gated``, ``karat``, ``crrelu``, ``ghost_bn``, ``msdrop``,
``pld``), each with the maths in its docstring; ``backend="reference"`` of every public op runs them.
"""
