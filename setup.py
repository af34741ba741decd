"""Build of mmhnet's native extensions, without torch.

Two pybind11 modules, both independent of torch's headers, ABI and CUDA flavour:

* ``mmhnet._C``      C++17 CPU kernels (OpenMP), always built. On x86-64 it is built for
  x86-64-v3 (AVX2, FMA), and the same sources again as ``mmhnet._C_avx512`` for x86-64-v4
  (AVX-512F/BW/DQ/VL): a wheel runs on any x86-64-v3 CPU, and ``mmhnet.ops._backend`` loads the
  AVX-512 module in its place where the CPU has AVX-512. ``MMHNET_CPU_ARCH`` builds one module
  for that ``-march`` instead (e.g. "native" for a local build). Other architectures build one
  module with the compiler's default flags.
* ``mmhnet._C_cuda`` CUDA kernels, built by default only where they can run: the torch in the
  build environment is a CUDA build and nvcc is found (``MMHNET_BUILD_CUDA=0/1`` forces it
  off/on; a CPU-only torch, or none importable, means off). A failed optional CUDA build prints
  why and leaves the CPU build working. An extension that is not built this time is removed
  from the build folder and the package, so a stale one never reaches a wheel.

Sources are compiled by ninja (parallel), from a ``build.ninja`` written per extension.

Environment:
  MMHNET_BUILD_CUDA   0 / 1 / unset (auto: build when torch has CUDA and nvcc is found)
  MMHNET_CUDA_ARCHS   e.g. "80;90" (default) or "90a"; each entry becomes -gencode for sm_XX
  MMHNET_CPU_ARCH     unset (default): the portable pair above; a value (e.g. "native"): one
                      module mmhnet._C built with -march=<value>
  CXX, NVCC           compilers to use
"""

import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "off", "no")


def _find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if nvcc is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
                return os.path.join(home, "bin", "nvcc")
    return nvcc


def _cuda_archs():
    spec = os.environ.get("MMHNET_CUDA_ARCHS", "80;90")
    archs = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags


def _pybind11_include():
    import pybind11

    return pybind11.get_include()


class NinjaExtension(Extension):
    """An extension compiled by ninja. ``cuda=True`` compiles .cu files with nvcc."""

    def __init__(self, name, sources, cuda=False, optional=False, march=None, isa=None):
        super().__init__(name, sources=sources)
        self.cuda = cuda
        self.optional_build = optional
        self.march = march  # -march value for the C++ sources (None: the compiler's default)
        self.isa = isa      # the CPU module's ISA label (its ``ISA`` attribute)


def _q(path):
    return path.replace(" ", "$ ").replace(":", "$:")


def _torch_has_cuda():
    """Whether the torch this build runs beside is a CUDA build (False where torch is not
    importable, e.g. under build isolation)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


class NinjaBuildExt(build_ext):
    def run(self):
        for name in _ALL_EXTENSIONS:
            if name not in {ext.name for ext in self.extensions}:
                self._remove_output(name)
        super().run()

    def _remove_output(self, name):
        """Delete a previous build's module (build folder, or the package for an editable
        install), so that it cannot be packaged or imported as if built now."""
        path = os.path.abspath(self.get_ext_fullpath(name))
        if os.path.exists(path):
            os.remove(path)
            print(f"mmhnet: removed {path} (not built this time)", file=sys.stderr)

    def build_extension(self, ext):
        try:
            self._build(ext)
        except Exception as err:  # noqa: BLE001 - report any failure of the optional build
            if not getattr(ext, "optional_build", False):
                raise
            self._remove_output(ext.name)
            print(
                f"mmhnet: WARNING: the optional extension {ext.name} was not built: {err}\n"
                f"mmhnet: the CPU extension and the Triton kernels are unaffected.",
                file=sys.stderr,
            )

    def _build(self, ext):
        ninja = shutil.which("ninja")
        if ninja is None:
            try:
                import ninja as ninja_mod

                ninja = os.path.join(ninja_mod.BIN_DIR, "ninja")
            except ImportError as err:
                raise RuntimeError("ninja is required to build mmhnet (pip install ninja)") from err
        out_path = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, ext.name))
        os.makedirs(build_dir, exist_ok=True)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)

        cxx = os.environ.get("CXX", "c++")
        includes = [
            f"-I{os.path.join(ROOT, 'csrc')}",
            f"-I{_pybind11_include()}",
            f"-I{sysconfig.get_paths()['include']}",
        ]
        cxxflags = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-fopenmp"]
        if ext.march:
            cxxflags.append(f"-march={ext.march}")
        if ext.isa:
            # one set of sources, one module per ISA: its pybind11 name and label come from here
            cxxflags += [f"-DMMHNET_MODULE_NAME={ext.name.rsplit('.', 1)[1]}",
                         shlex.quote(f'-DMMHNET_ISA="{ext.isa}"')]
        cxxflags += ["-Wall", "-Wno-unknown-pragmas"]
        lines = [
            f"cxx = {cxx}",
            f"cxxflags = {' '.join(cxxflags + includes)}",
            "rule cxx",
            "  command = $cxx $cxxflags -MMD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = CXX $out",
        ]
        link_flags = ["-shared", "-fopenmp"]
        linker = f"{cxx}"
        if ext.cuda:
            nvcc = _find_nvcc()
            if nvcc is None:
                raise RuntimeError("nvcc was not found (set NVCC or CUDA_HOME)")
            nvccflags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                         "-Xcompiler", "-fvisibility=hidden", "-lineinfo"] + _cuda_archs()
            lines += [
                f"nvcc = {nvcc}",
                f"nvccflags = {' '.join(nvccflags + includes)}",
                "rule nvcc",
                "  command = $nvcc $nvccflags -MD -MF $out.d -c $in -o $out",
                "  depfile = $out.d",
                "  deps = gcc",
                "  description = NVCC $out",
            ]
            # nvcc links the CUDA runtime statically: the module needs no libcudart on the path.
            linker = nvcc
            link_flags = ["-shared", "-Xcompiler", "-fopenmp"] + _cuda_archs()
        lines += [
            f"linker = {linker}",
            f"ldflags = {' '.join(link_flags)}",
            "rule link",
            "  command = $linker $in $ldflags -o $out",
            "  description = LINK $out",
        ]
        objects = []
        for src in ext.sources:
            src_abs = os.path.join(ROOT, src)
            obj = os.path.join(build_dir, os.path.basename(src) + ".o")
            rule = "nvcc" if src.endswith(".cu") else "cxx"
            lines.append(f"build {_q(obj)}: {rule} {_q(src_abs)}")
            objects.append(obj)
        lines.append(f"build {_q(out_path)}: link {' '.join(_q(o) for o in objects)}")
        with open(os.path.join(build_dir, "build.ninja"), "w") as f:
            f.write("\n".join(lines) + "\n")
        jobs = os.environ.get("MAX_JOBS")
        cmd = [ninja, "-C", build_dir] + (["-j", jobs] if jobs else [])
        subprocess.run(cmd, check=True)


_ALL_EXTENSIONS = ("mmhnet._C", "mmhnet._C_avx512", "mmhnet._C_cuda")


def _cpu_extensions(sources):
    """The CPU module(s): see the module docstring."""
    march = os.environ.get("MMHNET_CPU_ARCH") or None
    if march is not None:
        return [NinjaExtension("mmhnet._C", sources, march=march, isa=march)]
    if platform.machine().lower() in ("x86_64", "amd64"):
        return [NinjaExtension("mmhnet._C", sources, march="x86-64-v3", isa="avx2"),
                NinjaExtension("mmhnet._C_avx512", sources, march="x86-64-v4", isa="avx512")]
    return [NinjaExtension("mmhnet._C", sources, isa="default")]


def _extensions():
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/module_cpu.cpp"]
    exts = _cpu_extensions(cpu_sources)
    want_cuda = _env_flag("MMHNET_BUILD_CUDA")
    if want_cuda is None:
        want_cuda = _find_nvcc() is not None and _torch_has_cuda()
    if want_cuda:
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/module_cuda.cu"]
        forced = _env_flag("MMHNET_BUILD_CUDA") is True
        exts.append(NinjaExtension("mmhnet._C_cuda", cuda_sources, cuda=True, optional=not forced))
    return exts


setup(
    packages=find_packages(include=["mmhnet", "mmhnet.*"])
    + ["mmhnet.kernels"]
    + ["mmhnet.kernels." + p for p in find_packages("kernels")],
    package_dir={"mmhnet": "mmhnet", "mmhnet.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": NinjaBuildExt},
)
