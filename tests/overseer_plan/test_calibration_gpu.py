"""On a CUDA machine: `overseer estimate --calibrate --device cuda` measures this GPU's factors.

Skipped without a GPU (see tests/conftest.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_cuda_calibration_measures_context_and_workspace_and_is_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    from overseer_plan.calibration import calibrate, calibration_path, load_calibration
    from overseer_plan.estimate import EstimateConfig, estimate

    cal = calibrate(cpu=False)
    assert calibration_path().exists()
    c = cal.cuda
    assert c.measured and "--calibrate" in c.provenance
    assert 64 * 2**20 < c.context_bytes < 2048 * 2**20  # 271-287 MiB on an H100 with torch 2.11
    assert 1 * 2**20 <= c.cublas_workspace_bytes <= 64 * 2**20  # 32 MiB on Hopper
    assert load_calibration()[0].cuda == c
    est = estimate("gpt2", EstimateConfig(batch_size=2, seq_len=256), device="cuda")
    assert est.cuda_context_bytes == c.context_bytes
