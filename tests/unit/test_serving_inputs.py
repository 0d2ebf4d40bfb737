"""Input safety of the service without a model: image sniffing and decoding, strict base64,
URL refusal and the request-body cap (issue 15, "Input safety and security")."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel

from clip_har.errors import ApiError
from clip_har.serving.errors import RequestIdMiddleware, install_error_handlers
from clip_har.serving.images import (
    ACCEPTED_TYPES,
    decode_base64,
    decode_each,
    decode_image,
    decode_images,
    sniff_type,
)
from clip_har.serving.limits import BodySizeLimitMiddleware
from clip_har.serving.settings import ServeSettings

SETTINGS = ServeSettings(max_pixels=1_000_000, min_side=8)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, "red" if mode == "RGB" else 128)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zero pixels: ~100 KB on disk, 900
    megapixels decoded. Written by hand (streamed deflate), so the test never holds the pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_feed = 1000
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * rows_per_feed) for _ in range(height // rows_per_feed)]
    parts.append(compressor.compress(row * (height % rows_per_feed)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("JPEG", "JPEG"),
        ("PNG", "PNG"),
        ("GIF", "GIF"),
        ("WEBP", "WebP"),
        ("BMP", "BMP"),
        ("TIFF", "TIFF"),
    ],
)
def test_every_accepted_type_is_detected_and_decoded(fmt: str, name: str) -> None:
    data = encode(photo(), fmt)
    assert sniff_type(data) == name
    assert name in ACCEPTED_TYPES
    image = decode_image(data, SETTINGS)
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "ZIP"),
        (b"hello, this is a plain text file\n", "text"),
        (b'{"image": "not really"}', "JSON"),
        (b"<!doctype html><html><body>hi</body></html>", "HTML/XML"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\x00\x01\x02\x03\x04\xfe\xff" * 20, "unknown binary data"),
    ],
)
def test_non_images_are_refused_415_naming_what_was_sent(data: bytes, named: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(data, SETTINGS)
    assert caught.value.status == 415
    assert caught.value.code == "unsupported_media_type"
    assert named in caught.value.message


def test_an_image_type_pillow_knows_but_we_do_not_accept_is_415() -> None:
    data = encode(photo(), "PPM")  # Pillow decodes it; the service accepts only the listed types
    with pytest.raises(ApiError) as caught:
        decode_image(data, SETTINGS)
    assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")


# --------------------------------------------------------------------------- decoding


def test_empty_data_is_400_empty_image() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(b"", SETTINGS)
    assert (caught.value.status, caught.value.code) == (400, "empty_image")


def test_truncated_jpeg_is_400_invalid_image() -> None:
    noisy = Image.effect_noise((256, 256), 64).convert("RGB")
    data = encode(noisy, "JPEG")
    with pytest.raises(ApiError) as caught:
        decode_image(data[: len(data) // 2], SETTINGS)
    assert (caught.value.status, caught.value.code) == (400, "invalid_image")


def test_corrupt_header_with_an_image_signature_is_400_invalid_image() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, SETTINGS)
    assert (caught.value.status, caught.value.code) == (400, "invalid_image")


def test_pixel_bomb_is_413_from_the_header_without_decoding(bomb: bytes) -> None:
    assert len(bomb) < 200_000  # the whole point: tiny file, 900 megapixels
    with pytest.raises(ApiError) as caught:
        decode_image(bomb, ServeSettings())  # default limit: 40 megapixels
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    assert "900.0 megapixels" in caught.value.message


def test_image_over_the_configured_pixel_limit_is_413() -> None:
    data = encode(photo((1200, 1000)), "PNG")
    with pytest.raises(ApiError) as caught:
        decode_image(data, SETTINGS)  # 1.2 MP over a 1 MP limit
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")


def test_image_under_the_minimum_side_is_400_image_too_small() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(encode(photo((4, 100)), "PNG"), SETTINGS)
    assert (caught.value.status, caught.value.code) == (400, "image_too_small")


def test_decode_each_keeps_per_image_errors_in_order() -> None:
    good = encode(photo(), "PNG")
    results = decode_each([good, b"", b"text here", good], SETTINGS)
    assert [r.image is not None for r in results] == [True, False, False, True]
    assert [r.error.code for r in results if r.error] == ["empty_image", "unsupported_media_type"]


@pytest.mark.anyio
async def test_decode_images_runs_off_the_loop_and_raises_the_first_error() -> None:
    good = encode(photo(), "JPEG")
    images = await decode_images([good, good], SETTINGS)
    assert [image.size for image in images] == [(64, 48), (64, 48)]
    with pytest.raises(ApiError) as caught:
        await decode_images([good, b""], SETTINGS)
    assert caught.value.code == "empty_image"


# --------------------------------------------------------------------------- base64 and URLs


def test_base64_round_trip_with_data_url_prefix_and_line_breaks() -> None:
    data = encode(photo(), "PNG")
    text = base64.b64encode(data).decode()
    assert decode_base64(text) == data
    assert decode_base64(f"data:image/png;base64,{text}") == data
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(wrapped) == data


@pytest.mark.parametrize(
    "text",
    ["not base64!!", "QUJD", "QUJDRA", "QUJD@A==", "QUJDRA==QUJD", "ÿÿÿÿ", "_-_-"],
    ids=[
        "punctuation",
        "valid",
        "no-padding",
        "bad-char",
        "data-after-padding",
        "non-ascii",
        "urlsafe",
    ],
)
def test_base64_is_strict(text: str) -> None:
    if text == "QUJD":
        assert decode_base64(text) == b"ABC"
        return
    with pytest.raises(ApiError) as caught:
        decode_base64(text)
    assert (caught.value.status, caught.value.code) == (400, "invalid_base64")


@pytest.mark.parametrize(
    "url", ["http://example.com/a.jpg", "https://x/y.png", " file:///etc/passwd"]
)
def test_a_url_instead_of_bytes_is_refused_never_fetched(url: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_base64(url)
    assert (caught.value.status, caught.value.code) == (400, "urls_not_supported")


# --------------------------------------------------------------------------- body size cap

CAP = 1000


class Echo(BaseModel):
    text: str


def capped_app() -> FastAPI:
    """An app shaped like the service: request ids, JSON errors, the cap; routes that read
    the body themselves, through FastAPI's body parsing, and one that hides read errors."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/model")
    async def model(body: Echo) -> dict[str, int]:
        return {"size": len(body.text)}

    @app.post("/swallow")
    async def swallow(request: Request) -> dict[str, str]:
        try:
            await request.body()
        except Exception:
            return {"read": "failed"}  # an app that turns the failure into its own answer
        return {"read": "ok"}

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=CAP)
    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(capped_app()) as test_client:
        yield test_client


def assert_413(response: object, rid: str | None = None) -> None:
    assert response.status_code == 413  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"]["code"] == "payload_too_large"
    assert str(CAP) in body["error"]["message"]
    header = response.headers["x-request-id"]  # type: ignore[attr-defined]
    assert body["error"]["request_id"] == header
    if rid is not None:
        assert header == rid


def test_a_body_under_the_cap_passes(client: TestClient) -> None:
    assert client.post("/raw", content=b"x" * CAP).json() == {"size": CAP}


def test_content_length_over_the_cap_is_413_before_the_app_runs(client: TestClient) -> None:
    response = client.post("/raw", content=b"x" * (CAP + 1), headers={"X-Request-ID": "abc-1"})
    assert_413(response, "abc-1")


def test_a_50_mb_upload_is_413(client: TestClient) -> None:
    assert_413(client.post("/raw", content=b"\0" * (50 * 2**20)))


def test_chunked_body_passing_the_cap_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 300  # no Content-Length: counted while read

    for path in ("/raw", "/swallow"):
        assert_413(client.post(path, content=chunks()))


def test_body_parsed_by_fastapi_is_capped_too(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(10):
            yield b"z" * 300
        yield b'"}'

    assert_413(
        client.post("/model", content=chunks(), headers={"content-type": "application/json"})
    )
    assert client.post("/model", json={"text": "ok"}).json() == {"size": 2}


def test_the_service_goes_on_after_refusals(client: TestClient) -> None:
    assert_413(client.post("/raw", content=b"x" * (CAP * 3)))
    assert client.post("/raw", content=b"small").status_code == 200


def test_v2_paths_get_the_open_inference_protocol_error_shape() -> None:
    app = FastAPI()

    @app.post("/v2/x")
    async def v2(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=CAP)
    app.add_middleware(RequestIdMiddleware)
    with TestClient(app) as test_client:
        response = test_client.post("/v2/x", content=b"x" * (CAP + 1))
    assert response.status_code == 413
    assert set(response.json()) == {"error"}
    assert isinstance(response.json()["error"], str)
    assert response.headers["x-request-id"]
