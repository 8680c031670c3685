"""The upload-a-patch page's model: one uploaded image scored with a bundle.

A 50x50 image is one patch at the bundle's resolution (4.0 µm/px); a larger one is a small slide at
the µm/px the user gives, tiled and scored like a slide (tissue patches only, with the neighbour
context and the slide baseline of a slide's patches).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from idcmap.errors import InputError
from idcmap.model import ModelBundle, make_backend
from idcmap.slide_tiling import SlideError, TilingSpec, iter_patches, open_slide, plan_slide
from idcmap.slide_tiling.image_reader import MAX_IMAGE_PIXELS, png_header_size

MAX_UPLOAD_BYTES = 20 << 20
MAX_UPLOAD_PIXELS = 8192 * 8192  # declared in the header: checked before anything is decoded


def multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes); InputError if it is not one."""
    from email.parser import BytesParser
    from email.policy import HTTP

    if not content_type.lower().startswith("multipart/form-data"):
        raise InputError("send the image as multipart/form-data (field 'image')")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise InputError("the multipart/form-data body cannot be read")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name:
            fields[str(name)] = (part.get_filename() or "", payload if isinstance(payload, bytes) else b"")
    return fields


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG header declares, or None when it cannot be read."""
    if (size := png_header_size(data[:24])) is not None:
        return size
    if data[:3] == b"\xff\xd8\xff":  # walk the JPEG segments to a start-of-frame
        i = 2
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def decode(data: bytes, name: str) -> np.ndarray:
    """An uploaded PNG or JPEG as RGB uint8, or InputError with one line."""
    if not data:
        raise InputError(f"{name}: the upload is empty")
    size = declared_size(data)
    if size is None:
        raise InputError(f"{name}: not a PNG or JPEG image")
    w, h = size
    if w * h > min(MAX_UPLOAD_PIXELS, MAX_IMAGE_PIXELS):
        raise InputError(f"{name}: declares {w} x {h} px, more than {MAX_UPLOAD_PIXELS:,} px")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"{name}: cannot be decoded as an 8-bit colour image")
    if image.shape[2] == 4:  # alpha composited on white, as slides are
        alpha = image[..., 3:].astype(np.float32) / 255
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Predictor:
    """Scores uploads with a bundle (its ONNX backend, loaded once)."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.backend = make_backend(bundle, "onnx", threads=1)

    def predict(self, data: bytes, name: str, mpp: float | None) -> dict:
        image = decode(data, name)
        size = self.bundle.patch_size
        h, w = image.shape[:2]
        result = {"model_version": self.bundle.version, "threshold": self.bundle.threshold, "width": w, "height": h}
        if (w, h) == (size, size) and mpp in (None, self.bundle.target_mpp):
            prob = float(self.backend.predict(self.bundle.inputs(image[None], [0], [0], [0]))[0])
            return result | {"kind": "patch", "prob_idc": prob, "call": self._call(prob), "patches": []}
        if mpp is None:
            raise InputError(
                f"{name}: {w} x {h} px is not one {size}x{size} patch; give its µm/px (mpp) to tile it like a slide"
            )
        if not 0.05 <= mpp <= 100:
            raise InputError(f"{name}: mpp {mpp} is not a plausible µm/px (0.05 .. 100)")
        return result | self._tile(image, mpp)

    def _call(self, prob: float) -> str:
        return "IDC" if prob >= self.bundle.threshold else "no IDC"

    def _tile(self, image: np.ndarray, mpp: float) -> dict:
        """Score a larger image like a slide: its tissue patches, with neighbour context and baseline."""
        spec = TilingSpec(target_mpp=self.bundle.target_mpp, patch_size=self.bundle.patch_size, mpp=mpp)
        with tempfile.TemporaryDirectory(prefix="idcmap-upload-") as tmp:
            path = Path(tmp) / "upload.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            try:
                with open_slide(path) as reader:
                    plan = plan_slide(reader, spec)
                    batches = list(iter_patches(reader, plan, self.bundle.neighbourhood))
            except SlideError as exc:
                raise InputError(f"upload: {exc.reason}") from None
        if not batches:
            return {"kind": "image", "prob_idc": 0.0, "call": "no tissue", "patches": []}
        cat = lambda k: np.concatenate([getattr(b, k) for b in batches])  # noqa: E731
        prob = self.bundle.final_probability(self.backend.predict(cat("pixels")), cat("rows"), cat("cols"))
        scale = self.bundle.target_mpp / mpp  # image px per target px
        patches = [
            {"x": int(x), "y": int(y), "size": self.bundle.patch_size * scale, "prob_idc": float(p)}
            for x, y, p in zip(cat("x"), cat("y"), prob)
        ]
        top = float(prob.max())  # the image's call: its most probable patch at the bundle's threshold
        idc = int((prob >= self.bundle.threshold).sum())
        return {"kind": "image", "prob_idc": top, "call": self._call(top), "idc_patches": idc, "patches": patches}
