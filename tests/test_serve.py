"""``igd-fast serve``: the server the command builds (its flags, model loading, socket and
uvicorn; on a thread here) on a free loopback port against a tiny trained model.
Images sent over HTTP score as ``Scorer.predict`` scores their files (to 1e-6), alone and
micro-batched under concurrency; every bad request gets its 4xx JSON and the server keeps
serving; refusals at start-up exit 2. The batcher and the timeouts are also checked in
process against a scorer of known behaviour."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile

from igd_fast.cli import build_parser, main
from igd_fast.cli.serve import prepare
from igd_fast.score import Prediction, Scorer

KEY = "test-key-0123456789abcdef"
MAX_BODY_MB = 1


def _start(model: Path, key_file: Path):
    """The server ``igd-fast serve`` runs (the CLI's flags, model loading and socket), on a
    thread of this process: (uvicorn server, its thread, base URL)."""
    args = build_parser().parse_args(
        ["serve", "--model", str(model), "--port", "0", "--device", "cpu", "--api-key-file", str(key_file),
         "--max-batch", "8", "--max-wait-ms", "50", "--max-body-mb", str(MAX_BODY_MB)])  # fmt: skip
    server, sock = prepare(args)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _images(test_files: list[Path], root: Path) -> list[Path]:
    """20 files of several formats, sizes and modes made from the synthetic test images."""
    out = []
    for i, f in enumerate(test_files):
        rgb = Image.open(f).convert("RGB")
        out.append(f)
        out.append(root / f"{i}_flip.jpg")
        rgb.transpose(Image.FLIP_LEFT_RIGHT).save(out[-1], quality=90)
        out.append(root / f"{i}_small.bmp")
        rgb.resize((70, 50)).save(out[-1])
    grey = np.asarray(Image.open(test_files[0]).convert("L").resize((60, 90)), dtype=np.uint16) * 257
    out.append(root / "grey16.tiff")
    Image.fromarray(grey).save(out[-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90°: scored upright, as the file is
    out.append(root / "rotated.jpg")
    Image.open(test_files[-1]).convert("RGB").resize((70, 40)).save(out[-1], exif=exif)
    return out


CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp", ".tiff": "image/tiff"}


@pytest.fixture(scope="module")
def server(tiny_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("igd_serve")
    model = root / "model"
    shutil.copytree(tiny_pair["model"], model)  # the server calibrates into its model directory
    key_file = root / "keys.txt"
    key_file.write_text(f"# the accepted keys\n{KEY}\n")
    images = _images(tiny_pair["test"], root)
    server, thread, url = _start(model, key_file)
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
            yield {"url": url, "client": client, "server": server, "model": model, "images": images,
                   "scorer": Scorer(model, device="cpu")}  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive() and not server.config.app.state.service.batcher.alive  # stopped cleanly


def _post(client: httpx.Client, path: Path, query: str = "", **kw) -> httpx.Response:
    ctype = CONTENT_TYPES[path.suffix]
    return client.post(f"/v1/predict{query}", content=path.read_bytes(), headers={"Content-Type": ctype}, **kw)


def _same(got: dict, want: Prediction) -> None:
    assert abs(got["pred_score"] - want.pred_score) <= 1e-6
    assert abs(got["score"] - want.score) <= 1e-6 * max(1.0, abs(want.score))
    assert got["pred_label"] == want.pred_label


def test_http_scores_equal_scorer_predict(server):
    c, images = server["client"], server["images"]
    want = server["scorer"].predict(images)
    assert len(images) == 20 and len({p.suffix for p in images}) == 4
    for path, w in zip(images, want, strict=True):
        r = _post(c, path)
        assert r.status_code == 200, r.text
        _same(r.json(), w)
        assert (r.json()["height"], r.json()["width"]) == w.anomaly_map.shape
    # multipart, and the map and mask as PNGs at the image's size
    r = c.post("/v1/predict?map=1&mask=1", files={"image": ("a.bmp", images[2].read_bytes(), "image/bmp")})
    body = r.json()
    _same(body, want[2])
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["pred_mask"]))))
    np.testing.assert_array_equal(mask > 0, want[2].pred_mask)
    amap = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["anomaly_map"]))), dtype=np.float64)
    lo, hi = body["map_range"]
    expected = np.clip((want[2].anomaly_map - lo) / (hi - lo), 0, 1) * 65535
    assert amap.shape == want[2].anomaly_map.shape and np.abs(amap - expected).max() <= 1.0


def _huge_png(width: int, height: int) -> bytes:
    """A valid PNG header of ``width``×``height`` RGB with a few bytes of data: a
    decompression bomb's shape (decoding it would take width·height·3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + data


def _error(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json()["error"] == reason, r.text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, then we refuse
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, monkeypatch):
    c, url, good = server["client"], server["url"], server["images"][0]
    png = good.read_bytes()
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        _error(anonymous.post("/v1/predict", content=png, headers={"Content-Type": "image/png"}), 401, "unauthorized")
        _error(anonymous.post("/v1/predict", content=png, headers={"Content-Type": "image/png", "X-API-Key": "nope"}),
               401, "unauthorized")  # fmt: skip
        _error(anonymous.get("/metrics"), 401, "unauthorized")
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").json()["ready"] is True
        ok = anonymous.post("/v1/predict", content=png, headers={"Content-Type": "image/png",
                                                                 "Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert ok.status_code == 200
    ctype = {"Content-Type": "image/png"}
    big = os.urandom(MAX_BODY_MB * 2**20 + 1)
    _error(c.post("/v1/predict", content=big, headers=ctype), 413, "body_too_large")
    chunked = c.post("/v1/predict", content=iter([big[:2**19]] * 3), headers=ctype)  # no Content-Length
    _error(chunked, 413, "body_too_large")
    _error(c.post("/v1/predict", content=os.urandom(5000), headers=ctype), 400, "bad_image")
    _error(c.post("/v1/predict", content=b"", headers=ctype), 400, "empty_body")
    _error(c.post("/v1/predict", content=png[: len(png) // 2], headers=ctype), 400, "bad_image")
    _error(c.post("/v1/predict", content=png, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    _error(c.post("/v1/predict", content=png), 415, "unsupported_media_type")
    _error(c.post("/v1/predict", files={"other": ("a.png", png, "image/png")}), 400, "bad_multipart")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")  # decodable by Pillow, but not a format served
    _error(c.post("/v1/predict", content=gif.getvalue(), headers=ctype), 400, "bad_image")
    _error(c.get("/nowhere"), 404, "not_found")
    _error(c.post("/v1/predict?map=maybe", content=png, headers=ctype), 422, "bad_query")
    loaded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loaded.append(im.size) or load(im))
    _error(c.post("/v1/predict", content=_huge_png(12000, 12000), headers=ctype), 413, "too_many_pixels")
    _error(c.post("/v1/predict", content=_huge_png(40000, 40000), headers=ctype), 413, "too_many_pixels")
    assert loaded == []  # refused from the header: no pixel decoded (12000² would take 432 MB)
    r = _post(c, good)
    assert r.status_code == 200 and loaded and server["server"].started
    _same(r.json(), server["scorer"].predict(good))
    metrics = c.get("/metrics").text
    assert 'igd_fast_errors_total{reason="too_many_pixels"} 2.0' in metrics
    assert 'igd_fast_requests_total{path="/v1/predict",status="413"}' in metrics


def _histogram(text: str, name: str) -> tuple[float, float]:
    total = float(re.search(rf"^{name}_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(rf"^{name}_count (\S+)$", text, re.M).group(1))
    return total, count


def test_concurrent_requests_share_forward_passes_with_the_same_scores(server):
    c, images = server["client"], server["images"][:16]
    want = server["scorer"].predict(images)
    before = _histogram(c.get("/metrics").text, "igd_fast_batch_size")
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: _post(c, p), images))
    for r, w in zip(got, want, strict=True):
        assert r.status_code == 200, r.text
        _same(r.json(), w)
    after = _histogram(c.get("/metrics").text, "igd_fast_batch_size")
    images_scored, batches = after[0] - before[0], after[1] - before[1]
    assert images_scored == 16 and batches < 16  # some forward passes held several requests


def test_refused_at_start_up(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("IGD_FAST_API_KEY", raising=False)
    model = str(tiny_pair["model"])
    assert main(["serve", "--model", model, "--no-auth", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["serve", "--model", model]) == 2
    assert "no API key" in capsys.readouterr().err
    monkeypatch.setenv("IGD_FAST_API_KEY", "short")
    assert main(["serve", "--model", model]) == 2
    assert "shorter than 16" in capsys.readouterr().err
    monkeypatch.setenv("IGD_FAST_API_KEY", KEY)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


# ---------------------------------------------------------------- in process, a scorer of known behaviour


class _Post:
    threshold, map_range = 0.0, (0.0, 1.0)


class _SlowScorer:
    """Scores an image as its mean pixel after ``delay`` seconds per call; remembers each call's size."""

    model_dir = "fake"
    post_processor = _Post()

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, []

    def predict(self, images: list) -> list:
        self.calls.append(len(images))
        time.sleep(self.delay)
        if any(np.asarray(im).mean() > 250 for im in images):
            raise RuntimeError("a white image breaks this scorer")
        return [Prediction(None, float(np.asarray(im).mean()), 0.5, 0, None, None, 0.0, 0.0) for im in images]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def _run_app(scorer, requests: list[bytes], release=None, **settings) -> list[httpx.Response]:
    """The requests sent at once to the app over ``scorer``; ``release(tasks)``, when given,
    is awaited before the answers are gathered."""
    from igd_fast.serve.app import create_app
    from igd_fast.serve.settings import ServeSettings

    app = create_app(scorer, ServeSettings(**settings))

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            sent = [asyncio.ensure_future(c.post("/v1/predict", content=b, headers={"Content-Type": "image/png"}))
                    for b in requests]  # fmt: skip
            if release is not None:
                await release(sent)
            return await asyncio.gather(*sent)

    try:
        return asyncio.run(go())
    finally:
        app.state.service.batcher.close()


def test_batches_fill_up_to_max_batch_and_a_failing_image_fails_alone():
    scorer = _SlowScorer(0.05)
    out = _run_app(scorer, [_png(v) for v in range(10, 110, 10)], max_batch=4, max_wait_ms=200)
    assert [r.json()["score"] for r in out] == [float(v) for v in range(10, 110, 10)]
    assert max(scorer.calls) == 4 and sum(scorer.calls) == 10
    scorer = _SlowScorer(0.0)
    out = _run_app(scorer, [_png(10), _png(255), _png(30)], max_batch=4, max_wait_ms=200)
    assert [r.status_code for r in out] == [200, 500, 200]
    assert out[1].json()["error"] == "internal" and out[2].json()["score"] == 30.0


class _GatedScorer(_SlowScorer):
    """Holds every call until :attr:`gate` opens."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.gate = threading.Event()

    def predict(self, images: list) -> list:
        self.gate.wait(30)
        return super().predict(images)


def test_timeout_and_full_queue_answer_504_and_503():
    out = _run_app(_SlowScorer(0.5), [_png(10)], timeout_s=0.1)
    assert out[0].status_code == 504 and out[0].json()["error"] == "timeout"
    scorer = _GatedScorer()

    async def after_two_refusals(tasks):
        # the model holds one image and the queue (max_queue 1) one more: at least two are refused at once
        while sum(t.done() for t in tasks) < 2:
            await asyncio.sleep(0.01)
        scorer.gate.set()

    out = _run_app(scorer, [_png(v) for v in (10, 20, 30, 40)], after_two_refusals, max_batch=1, max_wait_ms=0,
                   max_queue=1)  # fmt: skip
    codes = sorted(r.status_code for r in out)
    assert codes[0] == 200 and codes[-2:] == [503, 503] and set(codes) == {200, 503}
    assert all(r.json()["error"] == "overloaded" for r in out if r.status_code == 503)
