"""A predict request's body -> the decoded image (8-bit RGB, exactly as ``igd-fast score``
reads the same file: :func:`igd_fast.data.decode_rgb`), or an :class:`ApiError` saying
what is wrong: 415 content type, 413 body or pixel count, 400 not an image."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..data import CorruptImageError, decode_rgb
from ..limits import LimitError
from .errors import ApiError
from .settings import IMAGE_FIELD, IMAGE_FORMATS, IMAGE_TYPES, MULTIPART, ServeSettings


def media_type(header: str | None) -> str:
    """``image/png; charset=x`` -> ``image/png`` (lower case; "" when absent)."""
    return (header or "").split(";", 1)[0].strip().lower()


def check_content_type(headers: Mapping[str, str]) -> str:
    ctype = media_type(headers.get("content-type"))
    if ctype not in IMAGE_TYPES and ctype != MULTIPART:
        shown = ctype or "none"
        raise ApiError(415, "unsupported_media_type", f"Content-Type {shown} is not accepted: send the image's bytes "
                       f"as one of {', '.join(IMAGE_TYPES)}, or {MULTIPART} with the image in the field "
                       f"'{IMAGE_FIELD}'")  # fmt: skip
    return ctype


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is over the limit of {limit:,} bytes (--max-body-mb)")


async def read_limited(chunks: AsyncIterator[bytes], limit: int, declared: str | None) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` bytes: at once when its
    Content-Length says so, else while it streams in (chunked bodies lie about nothing)."""
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def multipart_image(headers: Mapping[str, str], body: bytes, limit: int) -> bytes:
    """The bytes of the form field ``image``."""
    try:
        form = await MultiPartParser(headers, _one_chunk(body), max_files=1, max_fields=8, max_part_size=limit).parse()
    except MultiPartException as e:
        raise ApiError(400, "bad_multipart", f"cannot read the multipart body: {e.message}") from None
    try:
        field = form.get(IMAGE_FIELD)
        if not isinstance(field, UploadFile):
            raise ApiError(400, "bad_multipart", f"the multipart body has no file field '{IMAGE_FIELD}'")
        return await field.read()
    finally:
        await form.close()


def decode(data: bytes) -> Image.Image:
    """The image, or 400 (not an image this service decodes) / 413 (over the pixel limit,
    found from the header before any pixel is decoded)."""
    if not data:
        raise ApiError(400, "empty_body", "the request carries no image (an empty body)")
    try:
        return decode_rgb(data, "the request's image", IMAGE_FORMATS)
    except LimitError as e:
        raise ApiError(413, "too_many_pixels", str(e)) from None
    except CorruptImageError as e:
        raise ApiError(400, "bad_image", f"{e} (accepted: {', '.join(IMAGE_FORMATS)} images)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input, never a 500
        raise ApiError(400, "bad_image", f"cannot read the request's image: {type(e).__name__}: {e}") from None


async def read_image(request: Request, settings: ServeSettings) -> Image.Image:
    """The decoded image of a predict request (decoding runs off the event loop)."""
    ctype = check_content_type(request.headers)
    limit = settings.max_body_bytes
    body = await read_limited(request.stream(), limit, request.headers.get("content-length"))
    data = await multipart_image(request.headers, body, limit) if ctype == MULTIPART else body
    return await run_in_threadpool(decode, data)
