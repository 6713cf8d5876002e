"""Throughput and time to first token of `instit-edge serve` (the openai client against a real server process).

    python -m instit_edge.bench.serve_load out/bundle [--threads 1] [--requests 80] [--clients 8]

Prints requests / second for short text answers (1 client, then N concurrent clients) and the time to
first streamed token of an image question: a new image (vision + prefill) and the same image asked again
(vision cache + KV prefix reuse). Numbers include HTTP, JSON and base64 on localhost. Needs the ``openai``
client (the ``dev`` extra) and the server's ``demo`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def png_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((480, 640, 3), 80, np.uint8)
    for _ in range(4):
        x, y = rng.integers(40, 560), rng.integers(40, 400)
        img[y:y + 60, x:x + 60] = rng.integers(120, 256, 3)
    return img


def measure_serve(bundle: str, *, threads: int = 1, requests: int = 80, clients: int = 8,
                  max_tokens: int = 8) -> dict:
    """Start ``instit-edge serve BUNDLE`` on a free local port, measure, stop it. Returns requests per second
    with one and with ``clients`` clients, and the median TTFT (ms) of an image question: a new image, the
    same image and question again, the same image with a new question."""
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "instit_edge.cli", "serve", str(bundle), "--port", str(port),
                             "--threads", str(threads), "--queue", str(clients * 2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)

        def ask(i: int) -> None:
            c.chat.completions.create(model="m", max_tokens=max_tokens,
                                      messages=[{"role": "user", "content": f"Question {i}: what is [1] doing?"}])

        for i in range(5):
            ask(i)
        t0 = time.perf_counter()
        for i in range(requests // 2):
            ask(i)
        rps1 = (requests // 2) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(ask, range(requests)))
        rpsn = requests / (time.perf_counter() - t0)

        def ttft(url: str, q: str) -> float:
            t0 = time.perf_counter()
            for ch in c.chat.completions.create(model="m", max_tokens=8, stream=True, messages=[{
                    "role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                {"type": "text", "text": q}]}]):
                if ch.choices and ch.choices[0].delta.content:
                    return time.perf_counter() - t0
            return time.perf_counter() - t0

        new = [ttft(png_url(scene(100 + i)), "What is [1] holding?") for i in range(10)]
        same_url = png_url(scene(1))
        ttft(same_url, "What is [1]?")
        same = [ttft(same_url, "What is [1]?") for _ in range(10)]
        other = [ttft(same_url, f"Where is [{i % 4 + 1}] in the picture?") for i in range(10)]
    finally:
        proc.terminate()
        proc.wait(60)
    return {"bundle": str(bundle), "threads": threads, "clients": clients, "max_tokens": max_tokens,
            "rps_1_client": rps1, "rps_n_clients": rpsn, "ttft_ms_new_image": statistics.median(new) * 1e3,
            "ttft_ms_same_image_same_question": statistics.median(same) * 1e3,
            "ttft_ms_same_image_new_question": statistics.median(other) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    r = measure_serve(args.bundle, threads=args.threads, requests=args.requests, clients=args.clients,
                      max_tokens=args.max_tokens)
    print(f"short answers ({args.max_tokens} tokens): {r['rps_1_client']:.1f} req/s with 1 client, "
          f"{r['rps_n_clients']:.1f} req/s with {args.clients} clients")
    print(f"TTFT image question 640x480 (median of 10): new image {r['ttft_ms_new_image']:.1f} ms, "
          f"same image + same question {r['ttft_ms_same_image_same_question']:.1f} ms, "
          f"same image + new question {r['ttft_ms_same_image_new_question']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
