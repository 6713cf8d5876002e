"""Embed instit-edge in an app: mark a camera live, answer questions typed on stdin (no torch, no browser).

    python demos/embed_app.py BUNDLE              # camera 0
    python demos/embed_app.py BUNDLE clip.mp4     # a video file, played at its frame rate
    echo "What is [1] doing?" | python demos/embed_app.py BUNDLE clip.mp4 --wait 2

`[ID]` questions use the newest marked frame; questions with `<t>` use the
last keyframes (`<1>` the oldest). Marking goes on in LiveMarker's capture
thread while the model answers (stale frames are dropped, memory stays flat).
"""

import argparse
import queue
import sys
import threading
import time

from instit_edge import EdgeSession
from instit_edge.errors import InstitError
from instit_edge.marker.live import LiveMarker
from instit_edge.prompting import find_timestamps

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("bundle")
ap.add_argument("source", nargs="?", default="0", help="camera index or video file (default: camera 0)")
ap.add_argument("--llm", default="f16")
ap.add_argument("--vision", default="fp32")
ap.add_argument("--detector", default="motion")
ap.add_argument("--wait", type=float, default=0.0, help="seconds of marking before the first answer")
args = ap.parse_args()

try:
    session = EdgeSession.load(args.bundle, llm=args.llm, vision=args.vision)
    questions: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [questions.put(q.strip()) for q in sys.stdin] + [questions.put(None)],
                     daemon=True).start()
    source = int(args.source) if args.source.isdigit() else args.source
    start = time.monotonic()
    with LiveMarker(source, detector=args.detector, keyframes=8, realtime=True) as live:
        for mf in live:
            if time.monotonic() - start < args.wait or questions.empty():
                continue
            q = questions.get()
            if q is None:
                break
            video = bool(find_timestamps(q))
            try:
                live.check_question(q, video=video)  # an absent [ID] never reaches the model
                media = {"video": live.keyframe_images()} if video else {"image": mf.image}
                print(f"> {q}\n  frame {mf.index}, IDs {mf.ids}: ", end="", flush=True)
                for piece in session.stream(q, **media):
                    print(piece, end="", flush=True)
                s = session.last_stats
                print(f"\n  ({s['ttft_s'] * 1000:.0f} ms to first token, {s['reused_tokens']} tokens reused)")
            except InstitError as e:
                print(f"> {q}\n  ! {e}")
    print(f"marker: {live.stats}", file=sys.stderr)
except InstitError as e:
    sys.exit(f"error: {e}")
