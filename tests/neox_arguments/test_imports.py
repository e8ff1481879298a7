"""The config layer stays light: no torch, no deepspeed, no other megatron package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from megatron.neox_arguments import NeoXArgs, Resources
args = NeoXArgs.from_ymls(["configs/cpu_small.yml", "configs/local_setup.yml"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "deepspeed"))
other = sorted(m for m in sys.modules
               if m.startswith("megatron.") and not m.startswith("megatron.neox_arguments"))
print(heavy, other, args.global_num_gpus)
"""


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_loading_a_config_imports_no_torch_or_other_megatron_packages(tmp_path):
    # A missing hostfile keeps detection local; this machine has no NVIDIA driver.
    env = {"PATH": "/usr/bin:/bin", "DLTS_HOSTFILE": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=100, check=True)
    assert out.stdout.split("\n")[0] == "[] [] 1"
