"""Builds dropr's compiled hot path: the Cython sources in ext/ become dropr._name modules, and
the put front, dropr/_putter_py.py, is compiled as it is (typed by dropr/_putter.pxd) into
dropr._putter.

Without a working C compiler dropr installs without them and runs on its plain-Python twins;
the build says so in one warning line. With DROPR_REQUIRE_EXTENSIONS=1 that is an error.
"""

import os
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

MODULES = ["codec", "scan", "manifest", "drop", "moves"]
PURE_PYTHON_MODULES = ["putter"]
REQUIRED = os.environ.get("DROPR_REQUIRE_EXTENSIONS", "") not in ("", "0")  # read as dropr._impl reads it

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


class NoCompiler(Exception):
    """The extensions cannot be compiled here: no C compiler, or one that does not work."""

    def __str__(self) -> str:
        cause = self.__cause__
        while cause is not None and not isinstance(cause, subprocess.CalledProcessError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, subprocess.CalledProcessError):
            return f"{cause.cmd[0]} exited with status {cause.returncode}"
        return str(self.__cause__)


class BuildExt(build_ext):
    """``build_ext`` whose compiler failures are :class:`NoCompiler`."""

    def run(self) -> None:
        try:
            super().run()
        except PlatformError as exc:
            raise NoCompiler() from exc

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError) as exc:
            raise NoCompiler() from exc


try:
    # ext/ for the declarations the .pyx files share, "." for dropr/*.pxd, which name the
    # modules that the compiled front imports at run time. The C files go to build/, not
    # beside their sources, where the wheel would take dropr/*.c for package data.
    setup(
        ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["ext", "."], build_dir="build"),
        cmdclass={"build_ext": BuildExt},
    )
except NoCompiler as exc:
    if REQUIRED:
        sys.exit(f"dropr: cannot compile the extensions ({exc}), which DROPR_REQUIRE_EXTENSIONS=1 requires")
    print(f"warning: dropr: cannot compile the extensions ({exc}); installing the plain-Python twins", file=sys.stderr)
    setup()
