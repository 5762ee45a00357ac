"""Skip markers shared by the test files: one definition each, so every test that needs a backend says why alike.

``needs_cpp`` skips only where pyfast._C is not built; CI builds it, and
tests/test_build.py::test_the_cpu_extension_is_built_so_no_cpp_test_is_skipped fails if it is missing, so on CI no
test is skipped by it. ``needs_cuda`` (the CUDA kernels and a visible GPU) is the GPU tier.
"""

import pytest

from pyfast import _extension

needs_cpp = pytest.mark.skipif(not _extension.has_cpp(), reason=f"needs pyfast._C: {_extension.cpp_reason()}")
needs_cuda = pytest.mark.skipif(not _extension.has_cuda(), reason=f"needs the CUDA kernels: {_extension.cuda_reason()}")
