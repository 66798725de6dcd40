"""Request limits: the body-size guard (an ASGI middleware) and the checks and decoders for client inputs.

Clients never name files: text and JSON values go to the predictor as they are (checked for size), images and
audio arrive as uploads (multipart) or base64 strings (optionally `data:` URLs) and are decoded here into arrays
after their size (pixels, seconds) is checked from the header, before any pixel or sample is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re

from luban.serve.errors import ApiError

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.I)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body over `limit` bytes, by Content-Length or as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > self.limit:
                return await self._reject(send, declared)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, seen)

    async def _reject(self, send, size: int):
        msg = (f"request body too large: {size} bytes > the limit of {self.limit} bytes" if size >= 0
               else "invalid Content-Length header")
        status = 413 if size >= 0 else 400
        body = json.dumps({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                     "code": "body_too_large" if size >= 0 else "bad_content_length"}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def input_error(message: str, index: int | None = None, code: str = "invalid_input") -> ApiError:
    where = f"input {index + 1}: " if index is not None else ""
    return ApiError(422, where + message, "invalid_request_error", "inputs", code)


def b64_bytes(value, index: int) -> bytes:
    if not isinstance(value, str):
        raise input_error(f"expected a base64 string (or a data: URL), found {type(value).__name__}", index)
    s = _DATA_URL.sub("", value.strip(), count=1)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise input_error("not valid base64 (send the file's bytes base64-encoded, or upload it with "
                          "multipart/form-data)", index) from None


def decode_image(data: bytes, index: int, max_pixels: int, name: str | None = None):
    """Image bytes -> HxWx3 uint8 RGB array (EXIF orientation applied); pixels checked before decoding."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or f"input {index + 1}"
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise input_error(f"{label}: not an image PIL can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...)", None,
                          "bad_image") from None
    w, h = im.size
    if w * h > max_pixels:
        raise input_error(f"{label}: image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", None,
                          "image_too_large")
    try:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise input_error(f"{label}: the image could not be decoded ({e})", None, "bad_image") from None


def decode_audio(data: bytes, index: int, max_seconds: float, name: str | None = None):
    """Audio file bytes (WAV, FLAC, OGG, ...) -> (mono float32 waveform, sample rate); length checked first."""
    import numpy as np
    import soundfile as sf

    label = name or f"input {index + 1}"
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames
            if rate <= 0:
                raise RuntimeError("no sample rate")
            if frames / rate > max_seconds:
                raise input_error(f"{label}: {frames / rate:.1f} s of audio is over the limit of {max_seconds:g} s",
                                  None, "audio_too_long")
            wave = f.read(dtype="float32", always_2d=True)
    except ApiError:
        raise
    except (RuntimeError, sf.LibsndfileError, ValueError, TypeError, OSError) as e:
        raise input_error(f"{label}: not an audio file soundfile can read (WAV, FLAC, OGG, ...): {e}", None,
                          "bad_audio") from None
    if wave.size == 0:
        raise input_error(f"{label}: empty audio", None, "bad_audio")
    return np.ascontiguousarray(wave.mean(axis=1)), int(rate)


def check_text(value, index: int, max_chars: int) -> None:
    if isinstance(value, str) and len(value) > max_chars:
        raise input_error(f"text of {len(value)} characters is over the limit of {max_chars}", index, "text_too_long")


def reject_paths(value, index: int) -> None:
    """For tasks that do not declare what they take: a string naming a file here is refused (clients upload)."""
    if isinstance(value, str) and value.strip() and len(value) < 4096:
        try:
            exists = os.path.exists(value.strip())
        except (OSError, ValueError):
            exists = False
        if exists:
            raise input_error("file paths are not accepted; upload the file instead", index, "path_not_allowed")
