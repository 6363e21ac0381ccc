"""Builds dropr's compiled hot path: the Cython sources in ext/ become dropr._name modules."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["codec", "scan", "manifest", "drop"]

directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(f"dropr._{name}", [os.path.join("ext", f"_{name}.pyx")], include_dirs=["ext"])
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["ext"]))
