"""tools/profile_step.py: the family a kernel or host op is counted under, and the sums."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tools import profile_step


@pytest.mark.parametrize(("name", "family"), [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NTT", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_256x128_8x4_nt_align1>", "gemm"),
    ("aten::mm", "gemm"),
    ("aten::addmm_", "gemm"),
    ("openblas::sgemm", "gemm"),  # megatron.utils.blas.PROFILER_NAME
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_fused_adamw_", "optimizer"),
    ("void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>", "optimizer"),
    ("aten::_foreach_norm", "optimizer"),  # the gradient-norm pass of clipping
    ("aten::native_layer_norm_backward", "norm"),
    ("void at::native::bfloat16_copy_kernel_cuda", "copy/cast"),
    ("aten::cat", "copy/cast"),
    ("aten::gelu", "elementwise/other"),
    ("aten::exp_", "elementwise/other"),
])
def test_kernel_family(name: str, family: str) -> None:
    assert profile_step.kernel_family(name) == family


def test_by_family_sums_and_sorts_largest_first() -> None:
    totals = profile_step.by_family([("aten::mm", 3.0), ("aten::gelu", 1.0),
                                     ("aten::addmm", 2.0), ("aten::exp", 0.5)])
    assert totals == {"gemm": 5.0, "elementwise/other": 1.5}
    assert list(totals) == ["gemm", "elementwise/other"]


def test_profiler_ranges_are_not_counted_as_kernels() -> None:
    assert profile_step._is_annotation(SimpleNamespace(key="Optimizer.step#AdamW.step"))
    assert profile_step._is_annotation(SimpleNamespace(key="x", is_user_annotation=True))
    assert not profile_step._is_annotation(SimpleNamespace(key="aten::mm"))
