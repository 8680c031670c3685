"""ONNX export of the scoring function and int8 static quantization for ONNX Runtime.

tf2onnx's ``from_keras`` does not handle Keras 3 models; ``from_function`` on the scoring
``tf.function`` does, and the graph then takes uint8 RGB patches and holds the normalisation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

ONNX_OPSET = 17
INPUT_NAME = "patches"


def export_onnx(score_fn, path) -> Path:
    """Write the scoring ``tf.function`` (uint8 patches -> (N, 2) probabilities) as ONNX."""
    import tf2onnx

    path = Path(path)
    tf2onnx.convert.from_function(score_fn, input_signature=score_fn.input_signature,
                                  opset=ONNX_OPSET, output_path=str(path))
    return path


class _PatchReader:
    """Feeds calibration batches of uint8 patches to the quantizer."""

    def __init__(self, patches: np.ndarray, batch: int = 64):
        self._batches = iter([patches[i:i + batch] for i in range(0, len(patches), batch)])

    def get_next(self):
        b = next(self._batches, None)
        return None if b is None else {INPUT_NAME: b}


def quantize_int8(fp32_path, out_path, calibration_patches: np.ndarray) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on the given patches."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), _PatchReader(calibration_patches),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        # convolutions and dense layers only: normalisation and softmax stay fp32
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return Path(out_path)
