"""Builds statebag's Cython extensions; all other metadata lives in pyproject.toml.

Environment switches:
- STATEBAG_REQUIRE_EXTENSIONS=1: a failed compile aborts the build (CI sets it). Otherwise a
  compile failure skips the extension and statebag runs on its pure-Python twin, with one
  warning at import.
- STATEBAG_DEBUG=1: build without optimisation, with debug symbols and Cython's bounds checks.
- STATEBAG_SANITIZE=1: build with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


REQUIRE = _flag("STATEBAG_REQUIRE_EXTENSIONS")
DEBUG = _flag("STATEBAG_DEBUG")
SANITIZE = _flag("STATEBAG_SANITIZE")

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
link_args = []
if SANITIZE:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]

extensions = [
    Extension(
        f"statebag.{path.stem}",
        [str(path)],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for path in sorted(Path("ext/statebag").glob("*.pyx"))
]

ext_modules = cythonize(extensions, compiler_directives=directives, include_path=["ext"])
# cythonize() returns new Extension objects without `optional`; set it on those.
for ext in ext_modules:
    ext.optional = not REQUIRE

setup(ext_modules=ext_modules)
