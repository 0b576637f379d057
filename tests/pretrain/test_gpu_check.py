"""bench/gpu_check.sh on a machine without CUDA: it must fail loudly, never pass or write a result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run bench/gpu_check.sh itself")
def test_gpu_check_fails_loudly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "GPU CHECK FAILED: no CUDA device" in r.stderr
    assert not out.exists()
