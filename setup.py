"""Builds dropr's compiled hot path: the Cython sources in ext/ become dropr._name modules, and
the put front, dropr/_putter_py.py, is compiled as it is (typed by dropr/_putter.pxd) into
dropr._putter."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["codec", "scan", "manifest", "drop"]
PURE_PYTHON_MODULES = ["putter"]

directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(f"dropr._{name}", [os.path.join("ext", f"_{name}.pyx")], include_dirs=["ext"]) for name in MODULES
] + [Extension(f"dropr._{name}", [os.path.join("dropr", f"_{name}_py.py")]) for name in PURE_PYTHON_MODULES]

# ext/ for the declarations the .pyx files share, "." for dropr/*.pxd, which name the modules
# that the compiled front imports at run time.
setup(ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["ext", "."]))
