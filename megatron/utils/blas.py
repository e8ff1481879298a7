"""fp32 matrix products on OpenBLAS, on CPUs where it beats the MKL that torch bundles.

torch's CPU wheels multiply fp32 matrices with a statically linked Intel MKL, which on AMD
CPUs does not take its tuned code path. The product that suffers most is the output
layer's ``[n, h] x [h, V]`` (vocabulary-wide) one: inside a training step on this
project's 2-core AMD EPYC machines it ran at 125 GFLOP/s on MKL and 146 on OpenBLAS (the
``scipy-openblas32`` wheel, the build numpy and SciPy ship), while the transformer layers'
products were within +-5% of each other and the 512 x 512 ones 30% slower on OpenBLAS.
So the fused head (``megatron.model.fused_loss``) sends its three vocabulary-wide products
here, and the choice is made by the device: :func:`enabled` is true on a CPU whose vendor
is AMD's (or Hygon's, the same cores), where the library is installed.

The library is called through ``ctypes`` (which releases the GIL, so the data prefetch
thread keeps running) with the operands' own strides: a transposed view is passed as a
transposed operand, never copied, and ``accumulate`` adds into the output in the same pass
(``beta = 1``), as ``addmm_`` does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

import torch

from megatron.utils.cpuinfo import cpuinfo_field

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

THREAD_TIMEOUT = "4"
"""``OPENBLAS_THREAD_TIMEOUT`` (log2 of the cycles an idle OpenBLAS thread spins before it
sleeps) unless the user sets it. The default, 2^28 cycles (~0.1 s), kept OpenBLAS's worker
spinning through the element-wise work between products, on cores torch's own threads
needed: on 2 cores the softmax, GELU and attention ops ran 1.4-2.8x slower."""

PROFILER_NAME = "openblas::sgemm"
"""How an OpenBLAS product shows in torch.profiler (``tools/profile_step.py`` counts it as a
GEMM)."""

ENV_OVERRIDE = "MEGATRON_CPU_BLAS"
"""``openblas`` or ``torch`` forces the choice (for measuring one against the other)."""


def _cpu_vendor() -> str:
    """``vendor_id`` of ``/proc/cpuinfo`` (``AuthenticAMD``, ``GenuineIntel``, ...)."""
    return cpuinfo_field("vendor_id") or platform.processor()


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded OpenBLAS with ``sgemm``'s signature declared; None without the wheel."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT)  # read when loaded,
    try:  # which importing the package does
        import scipy_openblas32
    except ImportError:
        return None
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    lib = ctypes.CDLL(path)
    f = lib.scipy_cblas_sgemm
    f.restype = None
    f.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                       ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                       ctypes.c_void_p, ctypes.c_int]
    return lib


OPENBLAS_VENDORS = ("AuthenticAMD", "HygonGenuine")
"""CPU vendors (``/proc/cpuinfo``'s ``vendor_id``) whose fp32 products go to OpenBLAS."""


@functools.cache
def enabled() -> bool:
    """Whether the fused head's fp32 CPU products go to OpenBLAS here (an AMD CPU and the
    library installed, unless ``MEGATRON_CPU_BLAS`` says otherwise)."""
    choice = os.environ.get(ENV_OVERRIDE, "").lower()
    if choice == "torch" or (choice != "openblas" and _cpu_vendor() not in OPENBLAS_VENDORS):
        return False
    return _library() is not None


def _operand(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``(tensor, transpose flag, leading dimension)`` of a 2-D matrix as BLAS reads it."""
    rows, cols = t.shape
    if t.stride(1) == 1 and t.stride(0) >= max(1, cols):
        return t, _NO_TRANS, t.stride(0)
    if t.stride(0) == 1 and t.stride(1) >= max(1, rows):
        return t, _TRANS, t.stride(1)
    t = t.contiguous()
    return t, _NO_TRANS, max(1, cols)


def _usable(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> bool:
    """fp32 CPU matrices (``out`` with unit-stride rows) and OpenBLAS chosen here."""
    tensors = (a, b) if out is None else (a, b, out)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2
               for t in tensors):
        return False
    if a.numel() == 0 or b.numel() == 0:
        return False
    if out is not None and (out.shape != (a.shape[0], b.shape[1]) or out.stride(1) != 1
                            or out.stride(0) < out.shape[1]):
        return False
    return enabled()


def _set_threads(lib: ctypes.CDLL, threads: int) -> None:
    """Give OpenBLAS torch's thread count when its own differs (setting it is not free;
    reading it is)."""
    if lib.scipy_openblas_get_num_threads() != threads:
        lib.scipy_openblas_set_num_threads(threads)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
       accumulate: bool = False) -> torch.Tensor:
    """``a @ b`` (2-D), into ``out`` when given, added to it when ``accumulate``.

    Goes to OpenBLAS for fp32 CPU tensors where :func:`enabled`, to torch otherwise. No
    autograd: the fused head calls it inside its own ``autograd.Function``.
    """
    if not _usable(a, b, out):
        if out is None:
            return torch.matmul(a, b)
        return out.addmm_(a, b) if accumulate else torch.matmul(a, b, out=out)
    if out is None:
        out, accumulate = torch.empty((a.shape[0], b.shape[1]), dtype=torch.float32), False
    lib = _library()
    _set_threads(lib, torch.get_num_threads())
    (m, k), n = a.shape, b.shape[1]
    a, trans_a, lda = _operand(a)
    b, trans_b, ldb = _operand(b)
    # Named for torch.profiler: a ctypes call is otherwise counted as its caller's own time.
    with torch.profiler.record_function(PROFILER_NAME):
        lib.scipy_cblas_sgemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0, a.data_ptr(), lda,
                              b.data_ptr(), ldb, 1.0 if accumulate else 0.0, out.data_ptr(),
                              max(1, out.stride(0)))
    return out
