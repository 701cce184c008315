"""Build the Cython kernels.  Metadata lives in pyproject.toml.

Environment switches (all optional):

* ``CNNX_NO_OPENMP=1``     build without OpenMP even if the compiler supports it
* ``CNNX_DEBUG_BUILD=1``   Cython bounds/wraparound/initialisation checks on, -O1 -g;
                           ``CNNX_DEBUG_BUILD=asan`` adds AddressSanitizer as well
* ``CNNX_ANNOTATE=1``      write Cython's annotated HTML next to each .pyx
* ``CNNX_NO_AVX2=1``       skip the second builds of the pooling (-mavx2), convolution and
                           Winograd (-mavx2 -mfma) kernels (x86-64 only; used at run time
                           only on CPUs with AVX2 and FMA)
"""

import os
import platform
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


DEBUG = os.environ.get("CNNX_DEBUG_BUILD", "").strip().lower()
DEBUG = "" if DEBUG in ("", "0", "false", "no", "off") else DEBUG
ASAN = DEBUG == "asan"

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", omp_get_max_threads() > 0 && n > 0);
        return 0;
    }
    """
)


def _openmp_flags(compiler):
    """Compile and link a tiny OpenMP program; return the flags if that works."""
    if _env_flag("CNNX_NO_OPENMP"):
        return None, "disabled by CNNX_NO_OPENMP"
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, ldflags in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=ldflags)
            except Exception:  # noqa: BLE001 - any failure means "no OpenMP"
                continue
        return (cflags, ldflags), "ok"
    return None, "compiler does not support OpenMP"


class BuildExt(build_ext):
    """Adds OpenMP flags only when a test program with them compiles and links."""

    def build_extensions(self):
        flags, why = _openmp_flags(self.compiler)
        for ext in self.extensions:
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
            ext.define_macros.append(("CNNX_OPENMP", "1" if flags is not None else "0"))
        if flags is None:
            print(f"cnnx: building WITHOUT OpenMP ({why}); kernels will run on one thread")
        super().build_extensions()


if sys.platform == "win32":
    opt_args = ["/O2"]
elif DEBUG:
    opt_args = ["-O1", "-g", "-fno-omit-frame-pointer"]
else:
    opt_args = ["-O3"]
link_args = []
if ASAN:
    opt_args += ["-fsanitize=address"]
    link_args += ["-fsanitize=address"]

macros = [
    ("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
    ("CNNX_DEBUG", "1" if DEBUG else "0"),
]


def _extension(name, extra_compile_args=()):
    return Extension(
        f"cnnx.{name}",
        [f"cnnx/{name}.pyx"],
        include_dirs=[np.get_include()],
        depends=["cnnx/_argmax.h", "cnnx/_max2x2.h", "cnnx/_corr_kernel.h",
                 "cnnx/_corr_kernel.pxd", "cnnx/_kernel_utils.pxd"],
        define_macros=list(macros),
        extra_compile_args=list(opt_args) + list(extra_compile_args),
        extra_link_args=list(link_args),
    )


extensions = [_extension(name)
              for name in ("_conv", "_winograd", "_pool", "_activations", "_build_info")]

# The pooling, convolution and Winograd kernels once more, for AVX2 CPUs (picked at run
# time, see cnnx/_kernels.py): gcc vectorises float64 max pooling only with AVX2; the direct
# convolution loops and the Winograd transforms and products run twice the lanes, the
# products with fused multiply-adds.  gcc/clang on x86-64 only.
if (platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
        and not _env_flag("CNNX_NO_AVX2")):
    extensions.append(_extension("_pool_avx2", ["-mavx2"]))
    extensions.append(_extension("_conv_avx2", ["-mavx2", "-mfma"]))
    extensions.append(_extension("_winograd_avx2", ["-mavx2", "-mfma"]))

directives = {
    "language_level": 3,
    "boundscheck": bool(DEBUG),
    "wraparound": False,
    "initializedcheck": bool(DEBUG),
    "cdivision": True,
    "embedsignature": True,
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=_env_flag("CNNX_ANNOTATE"),
        # directives differ between normal and debug builds: never reuse stale C files
        force=True,
    ),
    cmdclass={"build_ext": BuildExt},
)
