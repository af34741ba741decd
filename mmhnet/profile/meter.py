"""Memory meters: the current and peak memory of this process, in bytes.

CPU: the resident set from /proc/self/status (VmRSS now, VmHWM its high-water mark); the mark is
reset to the current value by writing 5 to /proc/self/clear_refs (Linux). Freed memory shows in
the resident set only if the allocator returns it: run the process with
``MALLOC_ENV`` (glibc serves blocks of 64 KiB and more by mmap and unmaps them when freed) and
call ``release`` before reading a baseline.

CUDA: torch's caching allocator, memory_allocated and max_memory_allocated.
"""

import ctypes
import ctypes.util
import gc

import torch

__all__ = ["MALLOC_ENV", "CpuMeter", "CudaMeter", "make_meter"]

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _libc_malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


class CpuMeter:
    """Resident-set meter of this process (Linux only)."""

    kind = "cpu resident set (VmRSS / VmHWM)"

    def __init__(self):
        try:
            self._status_kib("VmHWM")
        except OSError as exc:
            raise RuntimeError(f"CPU memory profiling reads /proc/self/status (Linux): {exc}") from None
        self._malloc_trim = _libc_malloc_trim()

    @staticmethod
    def _status_kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise OSError(f"{field} is not in /proc/self/status")

    def current(self):
        return self._status_kib("VmRSS") * 1024

    def peak(self):
        return self._status_kib("VmHWM") * 1024

    def reset_peak(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def release(self):
        """Collect garbage and hand the allocator's free memory back to the system."""
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)

    @staticmethod
    def available():
        """Bytes the system can still give (MemAvailable of /proc/meminfo)."""
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        raise OSError("MemAvailable is not in /proc/meminfo")

    def synchronize(self):
        pass


class CudaMeter:
    """Meter of torch's CUDA allocator on the current device."""

    kind = "torch.cuda.max_memory_allocated"

    def current(self):
        return torch.cuda.memory_allocated()

    def peak(self):
        return torch.cuda.max_memory_allocated()

    def reset_peak(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def release(self):
        gc.collect()
        torch.cuda.empty_cache()

    def available(self):
        """Bytes the allocator can still get: free device memory plus what torch has cached."""
        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()

    def synchronize(self):
        torch.cuda.synchronize()


def make_meter(device):
    return CudaMeter() if torch.device(device).type == "cuda" else CpuMeter()
