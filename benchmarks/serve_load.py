"""Load test of ``igd-fast serve`` on loopback: throughput and latency at concurrency 1, 8
and 32, micro-batched against batch-1 serving, then a fuzz of bad requests.

    python benchmarks/serve_load.py MODEL_DIR "IMAGES/*.png" [--duration 10] [--max-requests 3000]

Starts two servers itself (127.0.0.1, free ports, a fresh API key), one per mode:
``micro-batched`` (--max-batch 32 --max-wait-ms 5) and ``batch-1`` (--max-batch 1, each
request its own forward pass), and alternates between them. Each (mode, concurrency) runs for ``--duration`` seconds or
``--max-requests`` requests, whichever ends first, after a short warm-up; the clients are
``concurrency`` asyncio tasks in this process, each sending the next image as soon as its
previous answer came. Prints a markdown table (requests/s, p50 / p99 latency, errors, the
server's images per forward pass and how busy its model worker was, from its /metrics) and
the micro-batched / batch-1 throughput ratio at the highest concurrency.

The fuzz (against the micro-batched server) sends garbage bytes, a truncated PNG, a
12000×12000 PNG header, a wrong content type, an oversized body and requests without or
with a wrong key, asserts each status code, then that a good request still scores.
Exit 1 when a fuzz check fails or a load request errs.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import secrets
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

MODES = {"micro-batched": ["--max-batch", "32", "--max-wait-ms", "5"],
         "batch-1": ["--max-batch", "1", "--max-wait-ms", "0"]}
CONCURRENCY = (1, 8, 32)
CTYPE = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "bmp": "image/bmp", "tif": "image/tiff",
         "tiff": "image/tiff"}  # fmt: skip


def start_server(model: str, key: str, extra: list[str], device: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "igd_fast", "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
           "--device", device, "--max-body-mb", "4", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "IGD_FAST_API_KEY": key})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"the server did not start: {proc.stderr.read()}")


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator's client, far
    lighter than a general one (on 2 shared cores the client's CPU is the server's)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    async def post(self, body: bytes, ctype: str) -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.used > 2.0:
            await self.close()  # uvicorn drops keep-alive connections idle for 5 s: never race it
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {self.key}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
        length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
        data = await self.reader.readexactly(length)
        self.used = time.monotonic()
        if next((v for k, v in headers.items() if k.lower() == "connection"), "") == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(url: str, key: str, bodies: list[tuple[bytes, str]], concurrency: int, duration: float,
               max_requests: int) -> dict:  # fmt: skip
    """``concurrency`` closed-loop clients, each on its own connection; the latency of every
    answered request, errors counted by status."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0

    async def one(conn: Connection, i: int) -> None:
        body, ctype = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            status, data = await conn.post(body, ctype)
            ok = status == 200 and b"pred_score" in data
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            status, ok = type(e).__name__, False
            await conn.close()
        if ok:
            latencies.append(time.perf_counter() - t0)
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1

    async def client(conn: Connection, stop: float) -> None:
        nonlocal sent
        while time.perf_counter() < stop and sent < max_requests:
            sent += 1
            await one(conn, sent)

    conns = [Connection(host, int(port), key) for _ in range(concurrency)]
    await asyncio.gather(*(client(c, time.perf_counter() + 1.0) for c in conns))  # warm-up, not counted
    sent = 0
    latencies.clear()
    errors.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c, t0 + duration) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    lat = np.array(latencies) * 1000.0
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": elapsed,
            "rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"), "errors": errors}  # fmt: skip


def huge_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + data


def fuzz(url: str, key: str, good: tuple[bytes, str]) -> list[str]:
    """Each bad request's status (expected, got); the failures as lines."""
    png = good[0] if good[1] == "image/png" else huge_png(1, 1)
    cases = [
        ("garbage bytes", os.urandom(4096), "image/png", {"X-API-Key": key}, 400),
        ("truncated PNG", png[: len(png) // 2], "image/png", {"X-API-Key": key}, 400),
        ("12000x12000 PNG header", huge_png(12000, 12000), "image/png", {"X-API-Key": key}, 413),
        ("wrong content type", good[0], "text/plain", {"X-API-Key": key}, 415),
        ("oversized body (5 MiB)", os.urandom(5 * 2**20), "image/png", {"X-API-Key": key}, 413),
        ("no key", good[0], good[1], {}, 401),
        ("wrong key", good[0], good[1], {"X-API-Key": "x" * 32}, 401),
    ]
    failures = []
    print("\n| bad request | expected | got |\n|---|---|---|")
    with httpx.Client(base_url=url, timeout=30) as c:
        for name, body, ctype, headers, want in cases:
            r = c.post("/v1/predict", content=body, headers={"Content-Type": ctype, **headers})
            ok = r.status_code == want and r.json().get("error")
            print(f"| {name} | {want} | {r.status_code} {r.json().get('error')} |")
            if not ok:
                failures.append(f"{name}: expected {want}, got {r.status_code} {r.text[:200]}")
        r = c.post("/v1/predict", content=good[0], headers={"Content-Type": good[1], "X-API-Key": key})
        print(f"| a good request afterwards | 200 | {r.status_code} |")
        if r.status_code != 200 or "pred_score" not in r.json():
            failures.append(f"a good request after the fuzz: {r.status_code} {r.text[:200]}")
    return failures


def batch_counters(url: str, key: str) -> tuple[float, float, float]:
    """(images scored, forward passes, seconds in them) so far, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", headers={"X-API-Key": key}).text

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    return (value("igd_fast_batch_size_sum"), value("igd_fast_batch_size_count"),
            value("igd_fast_batch_duration_seconds_sum"))  # fmt: skip


def measured(url: str, key: str, bodies: list[tuple[bytes, str]], c: int, duration: float, n: int) -> dict:
    """One (server, concurrency) run, with the server's images per forward pass and the share
    of the wall time its model worker was busy."""
    before = batch_counters(url, key)
    t0 = time.perf_counter()
    r = asyncio.run(load(url, key, bodies, c, duration, n))
    wall = time.perf_counter() - t0
    after = batch_counters(url, key)
    images, passes, busy = (a - b for a, b in zip(after, before))
    return {**r, "images_per_pass": images / max(passes, 1), "worker_busy": busy / wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (e.g. the one `igd-fast demo` writes: runs/demo/model)")
    p.add_argument("images", help="glob of image files to send")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per (mode, concurrency), at most 30")
    p.add_argument("--max-requests", type=int, default=3000, help="requests per (mode, concurrency) at most")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = p.parse_args()
    files = sorted(glob.glob(a.images))
    if not files:
        sys.exit(f"no files match {a.images}")
    duration = min(a.duration, 30.0)  # bounded: 6 settings stay within a few minutes
    bodies = [(Path(f).read_bytes(), CTYPE.get(Path(f).suffix.lower().lstrip("."), "application/octet-stream"))
              for f in files]  # fmt: skip
    key = secrets.token_urlsafe(32)
    rows, failures = [], []
    # both servers up at once, the modes alternating per concurrency: a drift in the
    # machine's load (other work on shared cores) hits both alike
    servers = {mode: start_server(a.model, key, flags, a.device) for mode, flags in MODES.items()}
    try:
        for c in CONCURRENCY:
            for mode, (_, url) in servers.items():
                r = measured(url, key, bodies, c, duration, a.max_requests)
                rows.append({"mode": mode, **r})
                failures += [f"{mode} c={c}: {n} × {s}" for s, n in r["errors"].items()]
        failures += fuzz(servers["micro-batched"][1], key, bodies[0])
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    print("\n| serving | concurrency | requests | req/s | p50 ms | p99 ms | errors | images / pass | worker busy |\n"
          "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        errs = sum(r["errors"].values())
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {errs} | {r['images_per_pass']:.1f} | {r['worker_busy']:.0%} |")  # fmt: skip
    top = max(CONCURRENCY)
    rps = {r["mode"]: r["rps"] for r in rows if r["concurrency"] == top}
    ratio = rps["micro-batched"] / rps["batch-1"]
    print(f"\nmicro-batched / batch-1 throughput at concurrency {top}: {ratio:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "ratio_at_top": ratio, "failures": failures}, indent=1))
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
