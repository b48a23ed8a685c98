"""Receiving an image upload within limits: size, pixels, type, and time to send it.

`POST /api/read` accepts a multipart form with one file, or the image as the raw request
body. Each limit breached is an `UploadError` with an HTTP status, a short code and a message
that names the problem; the app turns it into a JSON error, never a 500.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import anyio
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from chessvlm.reader.images import MAX_PIXELS

# Pillow's name of each format accepted, and its media type. MPO is how Pillow opens the
# JPEG files of many phone cameras.
FORMAT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
CONTENT_TYPES = tuple(sorted(set(FORMAT_TYPES.values())))
FORM_FIELD = "file"


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may be: at most `max_bytes` of request body, `max_pixels` pixels
    (width x height), one of `CONTENT_TYPES`, sent within `receive_seconds`."""

    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    receive_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_pixels > MAX_PIXELS:
            raise ValueError(f"max_pixels cannot exceed the decoder's limit of {MAX_PIXELS:,}")


class UploadError(Exception):
    """An upload refused: `status` is the HTTP status, `code` a stable short name."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Upload:
    """An image received: its name (the form's file name, or `upload`), bytes, Pillow
    format and size in pixels."""

    name: str
    data: bytes
    format: str
    width: int
    height: int


async def receive_upload(request: Request, limits: UploadLimits) -> Upload:
    """The image in `request` (multipart field `file`, or the raw body), checked against
    `limits`; raises `UploadError` naming what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(int(declared), limits)
    bounded = Request(request.scope, _bounded_receive(request, limits))
    media_type = _media_type(request.headers.get("content-type"))
    try:
        with anyio.fail_after(limits.receive_seconds):
            if media_type == "multipart/form-data":
                name, media_type, data = await _form_file(bounded)
            else:
                name, data = "upload", await bounded.body()
    except TimeoutError:
        raise UploadError(
            408, "upload_timeout", f"the upload took more than {limits.receive_seconds:g} s"
        ) from None
    except ClientDisconnect:
        # Nobody is left to read the answer; it only keeps the server's log free of a 500.
        raise UploadError(400, "client_disconnected", "the client left mid-upload") from None
    _check_type(media_type)
    if not data:
        raise UploadError(400, "empty_upload", "the upload holds no bytes")
    return _inspect(name, data, limits)


def _bounded_receive(request: Request, limits: UploadLimits):
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limits.max_bytes:
                raise _too_large(received, limits)
        return message

    return receive


def _too_large(size: int, limits: UploadLimits) -> UploadError:
    return UploadError(
        413,
        "upload_too_large",
        f"the upload has {size:,} bytes or more; the limit is {limits.max_bytes:,}",
    )


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


async def _form_file(request: Request) -> tuple[str, str, bytes]:
    try:
        form = await request.form(max_files=1, max_fields=10)
    except MultiPartException as error:
        raise UploadError(400, "bad_form", f"the multipart form cannot be read: {error}") from None
    part = form.get(FORM_FIELD)
    if not isinstance(part, UploadFile):
        raise UploadError(
            400, "no_file", f"the multipart form has no file in a field named {FORM_FIELD!r}"
        )
    data = await part.read()
    await form.close()
    return part.filename or "upload", _media_type(part.content_type), data


def _check_type(media_type: str) -> None:
    if media_type not in CONTENT_TYPES:
        stated = media_type or "none"
        raise UploadError(
            415,
            "unsupported_type",
            f"content type {stated!r} is not an accepted image type ({', '.join(CONTENT_TYPES)})",
        )


def _inspect(name: str, data: bytes, limits: UploadLimits) -> Upload:
    # Only the header is read here: the pixel limit is checked before anything is decoded.
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, (width, height) = image.format or "", image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        raise UploadError(
            422, "not_an_image", f"{name}: not an image file Pillow can read"
        ) from None
    if image_format not in FORMAT_TYPES:
        raise UploadError(
            415,
            "unsupported_format",
            f"{name}: a {image_format} image; accepted formats are "
            f"{', '.join(sorted(FORMAT_TYPES))}",
        )
    if width * height > limits.max_pixels:
        raise UploadError(
            413,
            "too_many_pixels",
            f"{name}: {width}x{height} is {width * height:,} pixels; the limit is "
            f"{limits.max_pixels:,}",
        )
    return Upload(name, data, image_format, width, height)
