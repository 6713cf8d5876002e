"""Ask `instit-edge serve` with the official `openai` package: an image, a video, server-side marks.

    instit-edge serve out/bundle --api-key-env INSTIT_KEY &          # http://127.0.0.1:8080/v1
    python demos/serve_client_openai.py scene.jpg "What is [1] doing?"
    python demos/serve_client_openai.py f1.jpg f2.jpg f3.jpg f4.jpg "What does [1] do between <1> and <4>?"
    python demos/serve_client_openai.py raw.jpg "What is [2] next to?" --mark static

Several images in one message are the frames of a video, in order (<1>..<N>).
With --mark the server draws the marks itself and returns the instances.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import sys
import time

from openai import OpenAI


def data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image file(s), then the question")
    ap.add_argument("--url", default=os.environ.get("INSTIT_URL", "http://127.0.0.1:8080/v1"))
    ap.add_argument("--key", default=os.environ.get("INSTIT_KEY", "none"))
    ap.add_argument("--mark", help="mark on the server first: static | motion | face | person")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    *images, question = args.images
    if not images:
        sys.exit("give at least one image before the question")

    client = OpenAI(base_url=args.url, api_key=args.key)
    model = client.models.list().data[0].id
    content = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in images]
    content.append({"type": "text", "text": question})
    extra = {"instit": {"mark": args.mark, "style": "box+id"}} if args.mark else None

    t0 = time.perf_counter()
    ttft = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=args.max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body=extra)
    for chunk in stream:
        marks = (chunk.model_extra or {}).get("instit")
        if marks:  # the first chunk carries the server's marks
            for inst in marks["instances"]:
                print(f"[{inst['id']}] {inst['label']} box={inst['box']}", file=sys.stderr)
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - t0
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\n-- {chunk.usage.prompt_tokens} prompt tokens ({chunk.usage.prompt_tokens_details.cached_tokens} "
                  f"from cache), {chunk.usage.completion_tokens} generated, first token after "
                  f"{(ttft or 0) * 1000:.0f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
