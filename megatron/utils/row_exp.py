"""``exp(logits - row max)`` in place, with the row sums, in one pass over the logits (CPU).

The fused output layer (``megatron.model.fused_loss``) turns each chunk of ``[tokens, vocab]``
logits into ``exp(logit - max)`` and its row sums. In torch ops that is an fp32 copy of the
bf16 product, then ``amax``, ``sub_``, ``exp_``, ``sum`` and a cast back to bf16: about
2.4 GB of memory traffic for a 1024 x 50k chunk, where the arithmetic needs 0.2 GB. On a
2-core CPU with AMX those passes, not the GEMMs, were most of the head's time.

Here a small C kernel does it row by row: a row (100-200 KB) stays in the core's cache
between its max pass and its exp pass, so the logits are read once and written once, in
their own dtype (bf16 or fp32); sums are accumulated in double. It is compiled at first use
with the system C compiler (``$CC``, else ``cc``) for this CPU, cached under
``$MEGATRON_KERNEL_CACHE`` (default ``~/.cache/neox-trainer/kernels``), and called through
``ctypes`` (which releases the GIL). Without a compiler, on a GPU, or for other layouts the
same result comes from torch ops (:func:`_torch_exp_rows_`).

Non-finite logits stay visible: a NaN or +inf in a row makes its sum NaN, so the loss is
NaN and the trainer's non-finite guard skips the step.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from megatron.utils.cpuinfo import cpuinfo_field
from megatron.utils.throughput import DEFAULT_CACHE_DIR

LOG = logging.getLogger(__name__)

CACHE_ENV = "MEGATRON_KERNEL_CACHE"
"""Where the compiled kernel is kept (one file per source, compiler flags and CPU)."""

DISABLE_ENV = "MEGATRON_ROW_EXP"
"""``torch`` forces the torch-ops path (for measuring one against the other)."""

FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared",
         "-pthread")
"""No -ffast-math: it would let the compiler assume no NaN, and NaN must reach the loss."""

SOURCE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* e^d for d <= 0: d = k ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^7
   (relative error below 2e-7), 2^k added to the exponent bits. Below -80 the result is 0
   (e^-80 is 1.8e-35, nothing beside a row sum >= 1); NaN stays NaN. Plain arithmetic, so
   the compiler vectorizes it for whatever vector width the CPU has. */
static inline float exp_nonpositive(float d) {
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float x = d < -80.0f ? -80.0f : d;
    float kf = x * 1.44269504088896341f + shifter;
    int32_t ki;
    memcpy(&ki, &kf, 4);
    ki -= 0x4b400000; /* the bits of the shifter */
    kf -= shifter;
    float r = x - kf * 0.693145751953125f - kf * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += ki * (1 << 23);
    float e;
    memcpy(&e, &bits, 4);
    e = d < -80.0f ? 0.0f : e;
    return d != d ? d : e;
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch does; NaN stays a (quiet) NaN. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (f != f) ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
}

typedef struct {
    void *data;
    int64_t first, last, cols, ld;
    int bf16, have_max;
    float *row_max, *sums;
} job_t;

static void rows_f32(const job_t *j) {
    for (int64_t r = j->first; r < j->last; r++) {
        float *row = (float *)j->data + r * j->ld;
        float m = -INFINITY;
        if (j->have_max) {
            m = j->row_max[r];
        } else {
#pragma omp simd reduction(max : m)
            for (int64_t c = 0; c < j->cols; c++) m = row[c] > m ? row[c] : m;
            j->row_max[r] = m;
        }
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < j->cols; c++) {
            float e = exp_nonpositive(row[c] - m);
            row[c] = e;
            s += e;
        }
        j->sums[r] = (float)s;
    }
}

static void rows_bf16(const job_t *j) {
    for (int64_t r = j->first; r < j->last; r++) {
        uint16_t *row = (uint16_t *)j->data + r * j->ld;
        float m = -INFINITY;
        if (j->have_max) {
            m = j->row_max[r];
        } else {
#pragma omp simd reduction(max : m)
            for (int64_t c = 0; c < j->cols; c++) {
                float v = from_bf16(row[c]);
                m = v > m ? v : m;
            }
            j->row_max[r] = m;
        }
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < j->cols; c++) {
            float e = exp_nonpositive(from_bf16(row[c]) - m);
            row[c] = to_bf16(e);
            s += e;
        }
        j->sums[r] = (float)s;
    }
}

static void *run_job(void *arg) {
    const job_t *j = (const job_t *)arg;
    if (j->bf16) rows_bf16(j); else rows_f32(j);
    return NULL;
}

#define MAX_THREADS 256

/* Rows are split evenly over `threads` threads; the caller's thread takes the first share.
   NaN in a row is not a maximum, but it makes that row's sum NaN. Returns 0 on success. */
int row_exp(void *data, int64_t rows, int64_t cols, int64_t ld, int bf16, int have_max,
            float *row_max, float *sums, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows) threads = rows > 0 ? (int)rows : 1;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        job_t j = {data, rows * t / threads, rows * (t + 1) / threads, cols, ld, bf16,
                   have_max, row_max, sums};
        jobs[t] = j;
        started[t] = 0;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run_job(&jobs[t]); /* no thread to be had: do its share here */
    }
    return 0;
}
"""

_KINDS = {torch.bfloat16: 1, torch.float32: 0}


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR / "kernels")


def _build(compiler: str) -> Path:
    """The shared library for this source, flags and CPU, compiled when not cached yet.

    Written to a temporary name and renamed, so ranks building at once never load a
    half-written file.
    """
    # The CPU's feature flags are part of the key: the kernel is built for this CPU.
    key = hashlib.sha256("\0".join([SOURCE, compiler, *FLAGS, cpuinfo_field("flags")]).encode())
    target = _cache_dir() / f"row_exp-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "row_exp.c", Path(tmp) / "row_exp.so"
        src.write_text(SOURCE)
        subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], check=True,
                       capture_output=True, text=True)
        os.replace(out, target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel with its signature declared; None (and one warning) without it."""
    if os.environ.get(DISABLE_ENV) == "torch":
        return None
    compiler = os.environ.get("CC") or "cc"
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        LOG.warning("row_exp: no compiled kernel (%s), using torch ops: %s", compiler, detail)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.row_exp.argtypes = [ptr, i64, i64, i64, ctypes.c_int, ctypes.c_int, ptr, ptr,
                            ctypes.c_int]
    lib.row_exp.restype = ctypes.c_int
    return lib


def _usable(logits: torch.Tensor) -> bool:
    return (logits.device.type == "cpu" and logits.dim() == 2 and logits.dtype in _KINDS
            and logits.stride(1) == 1 and not logits.requires_grad)


def _torch_exp_rows_(logits: torch.Tensor,
                     row_max: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result from torch ops, computed in fp32 (the GPU path, and the fallback)."""
    if row_max is None:
        row_max = logits.amax(dim=-1).float()
    work = logits if logits.dtype == torch.float32 else logits.float()
    work.sub_(row_max.unsqueeze(-1)).exp_()
    sums = work.sum(dim=-1)
    if work is not logits:
        logits.copy_(work)
    return row_max, sums


def exp_rows_(logits: torch.Tensor,
              row_max: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits[r] <- exp(logits[r] - row_max[r])`` in place; returns ``(row_max, sums)``.

    Args:
        logits: ``[rows, cols]`` bf16 or fp32 (other dtypes and devices go through torch).
        row_max: fp32 ``[rows]`` to subtract (a maximum taken over several ranks); None:
            each row's own maximum, computed here.

    Returns:
        fp32 ``row_max`` and ``sums[r] = sum_j exp(logits[r, j] - row_max[r])``, summed
        from the unrounded fp32 values.
    """
    lib = _library() if _usable(logits) else None
    if lib is None:
        return _torch_exp_rows_(logits, row_max)
    rows, cols = logits.shape
    have_max = row_max is not None
    row_max = (row_max.float().contiguous() if have_max
               else torch.empty(rows, dtype=torch.float32))
    sums = torch.empty(rows, dtype=torch.float32)
    lib.row_exp(logits.data_ptr(), rows, cols, max(1, logits.stride(0)),
                _KINDS[logits.dtype], int(have_max), row_max.data_ptr(), sums.data_ptr(),
                torch.get_num_threads())
    return row_max, sums
