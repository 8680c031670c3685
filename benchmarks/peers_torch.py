"""The shipped idcnet in PyTorch (onnx2torch), for bench_peers.py and its TIAToolbox worker: both
environments import it, so it needs torch, onnx and onnx2torch only."""

from __future__ import annotations

from pathlib import Path

import torch


def idcnet(onnx_path: str | Path) -> torch.nn.Module:
    """The bundle's ONNX graph as a PyTorch module: uint8 (N, 50, 50, 3) RGB patches in, the
    (N, 2) probabilities ONNX Runtime gives out (the normalisation is part of the graph)."""
    import onnx
    import onnx2torch

    return onnx2torch.convert(onnx.load(str(onnx_path))).eval()


class ForWsinfer(torch.nn.Module):
    """``net`` as WSInfer calls a model: float (N, 3, H, W) in 0..1, as its ToTensor gives, in;
    log-probabilities out (WSInfer applies a softmax, which turns them back into ``net``'s)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        u8 = torch.round(x * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return torch.log(self.net(u8).clamp_min(1e-30))
