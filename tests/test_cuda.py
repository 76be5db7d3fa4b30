"""Checks that need a CUDA GPU (marker ``cuda``; skipped without one). bench/gpu_check.sh runs them:
``pytest -m cuda tests/test_cuda.py``."""

from __future__ import annotations

import logging

import pytest
import torch

from kitseg.inference.sliding import sliding_window

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _predictor(device):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1).to(device).eval()

    @torch.no_grad()
    def predict(x):
        return torch.softmax(conv(x.to(device)), 1)

    return predict


def test_sliding_window_on_cuda_matches_the_cpu():
    image = torch.randn(1, 40, 96, 96)
    cpu = sliding_window(image, _predictor("cpu"), (32, 64, 64), 0.5, device="cpu")
    gpu = sliding_window(image, _predictor("cuda"), (32, 64, 64), 0.5, device="cuda", sw_batch_size=4)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_cuda_out_of_memory_falls_back_to_cpu_accumulation(caplog):
    """Accumulating 3 x 96 x 512 x 512 float32 (300 MiB) on the GPU under a ~128 MiB cap runs out of
    memory; the volume is redone with accumulation on the CPU and gives the CPU's result."""
    image = torch.randn(1, 96, 512, 512)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(128 * 2**20 / total, 0)
    try:
        with caplog.at_level(logging.WARNING):
            out = sliding_window(image, _predictor("cuda"), (32, 128, 128), 0.25, device="cuda", sw_batch_size=2)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert "out of memory on cuda" in caplog.text
    assert out.device.type == "cpu"
    ref = sliding_window(image, _predictor("cpu"), (32, 128, 128), 0.25, device="cpu")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
