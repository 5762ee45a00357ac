// Makes pyfast._C importable as a Python extension module. The operators register themselves through static
// initialisers (TORCH_LIBRARY / TORCH_LIBRARY_IMPL) when the shared library is loaded; the module itself is empty.
// Built by setup.py only: the CMake build is a plain shared library loaded with torch.ops.load_library.
#include <Python.h>

static struct PyModuleDef pyfast_c_module = {PyModuleDef_HEAD_INIT, "_C", "pyfast compiled kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&pyfast_c_module); }
