"""tools/profile_step.py: the family a kernel or host op is counted under, and the sums."""

from __future__ import annotations

from pathlib import Path
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


TINY = ["num_layers=1", "hidden_size=64", "num_attention_heads=4", "seq_length=64",
        "max_position_embeddings=64"]


def _part_table(output: str) -> dict[str, list[float]]:
    """The ``by part`` rows of the report: ``{part: [total, share %, per-family ms...]}``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("by part"))
    columns = lines[start].split()[5:]  # after "by part (ms/step) total share"
    table = {"columns": columns}
    for line in lines[start + 1:]:
        name, numbers = line[:18].strip(), line[18:].replace("%", "").split()
        table[name] = [float(x) for x in numbers]
        if name == "outside any op":
            break
    return table


@pytest.mark.parametrize("side", ["ours", "hf"])
def test_report_splits_a_real_step_by_part(side: str) -> None:
    import subprocess
    import sys

    command = [sys.executable, str(Path(profile_step.__file__)), "--config", "19M",
               "--precision", "fp32", "--side", side, "--steps", "1"]
    for setting in TINY:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = _part_table(done.stdout)
    columns = table.pop("columns")
    for part in ("attention", "mlp", "head + loss", "norm", "embedding", "optimizer"):
        assert table[part][0] > 0, (part, done.stdout)
        assert table[part][0] == pytest.approx(sum(table[part][2:]), abs=0.1 * len(columns))
    gemm = columns.index("gemm") + 2
    assert table["attention"][gemm] > 0 and table["mlp"][gemm] > 0
    assert table.get("other ops", [0.0] * (len(columns) + 2))[gemm] == 0.0  # all GEMMs placed
    assert table["attention"][columns.index("attention") + 2] > 0
    assert sum(row[1] for row in table.values()) == pytest.approx(100.0, abs=1.0)
    assert "part::" not in done.stdout.split("by part")[0]  # ranges are no host ops
