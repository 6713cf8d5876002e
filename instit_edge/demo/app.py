"""The Gradio UI of the webcam demo, built on :class:`~instit_edge.demo.engine.DemoEngine`.

Layout: the camera (browser webcam, streamed to the server every
``stream_every`` seconds) and the marked frame with the visible instances on
the left; the chat, the keyframe strip (``<1>``..``<N>`` with timestamps) and
the latency panel on the right; manual marks and the variant switch below.

Safe by default (see :func:`launch`): binds 127.0.0.1, optional password,
a bounded queue with one question at a time, a private temporary folder that
is deleted on exit (and pruned while running), no ``allowed_paths`` (nothing
outside that folder is served), frames larger than the cap are downscaled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from instit_edge.demo.engine import DemoEngine, LiveView
from instit_edge.errors import InstitError

# Runs in the browser when the page loads: the webcam component cannot say *why* there is no picture.
CAMERA_CHECK_JS = """
async () => {
  const say = (text) => {  // also used after load, when the webcam component's own request fails
    const el = document.querySelector("#status");
    if (el) { el.innerText = text; }
    return text;
  };
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "⚠️ No camera access on this page: browsers only give the camera to pages served over https " +
           "or from localhost (open http://127.0.0.1:PORT on the machine itself, tunnel the port with ssh, " +
           "or put the demo behind https).";
  }
  if (!navigator.mediaDevices.__institWrapped) {
    const orig = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = async (constraints) => {
      try {
        return await orig(constraints);
      } catch (e) {
        const name = e && e.name;
        if (name === "NotAllowedError" || name === "SecurityError") {
          say("⚠️ Camera permission denied: allow the camera for this page in the browser's site settings, " +
              "then reload.");
        } else if (name === "NotFoundError" || name === "OverconstrainedError") {
          say("⚠️ No camera found: connect a camera, then reload.");
        } else if (name === "NotReadableError" || name === "AbortError") {
          say("⚠️ The camera is busy or failed to start: close other programs that use it, then reload.");
        } else {
          say("⚠️ The camera could not be opened (" + (e && e.message ? e.message : name) + ").");
        }
        throw e;
      }
    };
    navigator.mediaDevices.__institWrapped = true;
  }
  try {
    if (navigator.permissions) {
      const p = await navigator.permissions.query({name: "camera"});
      if (p.state === "denied") {
        return "⚠️ Camera permission denied for this page: allow the camera in the browser's site " +
               "settings, then reload.";
      }
    }
  } catch (e) {}
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    if (!devices.some(d => d.kind === "videoinput")) {
      return "⚠️ No camera found: connect a camera (or check that no other program holds it), then reload.";
    }
  } catch (e) {}
  return "Camera found: press “Click to Access Webcam”, then “Record” under the camera (the browser may ask " +
         "for permission).";
}
"""

CSS = """
#instances table { font-size: 0.9em; }
#latency table { font-size: 0.85em; }
"""

HELP = (
    "Ask about the instances by their IDs: `What is [1] doing?` uses the current frame; "
    "`What changed for [1] between <1> and <3>?` uses the keyframes below (`<1>` is the oldest)."
)


def instances_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_no instance marked yet (`motion` only sees things that move: add a mark for a still object)_"
    lines = ["| ID | label | seen | box |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| [{r['id']}] | {r['label']} | {r['seen_s']:.1f} s | {','.join(map(str, r['box']))} |")
    return "\n".join(lines)


def latency_markdown(d: dict) -> str:
    def f(v, unit=""):
        return "–" if v is None else f"{v:g}{unit}"

    return "\n".join([
        "| stage | value |", "|---|---|",
        f"| variant | llm `{d.get('llm')}`, vision `{d.get('vision')}` |",
        f"| marker | {f(d.get('marker_ms'), ' ms')} per frame, {f(d.get('fps'), ' fps')} |",
        f"| vision | {f(d.get('vision_ms'), ' ms')} |",
        (f"| prefill | {f(d.get('prefill_tok_s'), ' tok/s')} ({f(d.get('reused_tokens'))} of "
         f"{f(d.get('prompt_tokens'))} tokens reused) |"),
        f"| decode | {f(d.get('decode_tok_s'), ' tok/s')} |",
        f"| time to first token | {f(d.get('ttft_ms'), ' ms')} |",
        f"| last question | {d.get('question_about') or '–'} |",
    ])


def keyframe_gallery(view: LiveView, width: int = 160) -> list[tuple[np.ndarray, str]]:
    import cv2

    out = []
    for k, kf in enumerate(view.keyframes(), 1):
        h, w = kf.image.shape[:2]
        thumb = cv2.resize(kf.image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        out.append((thumb, f"<{k}> {kf.timestamp:.1f} s"))
    return out


def build_app(engine: DemoEngine, *, stream_every: float = 0.1, title: str | None = None,
              delete_cache: tuple[int, int] | None = (30, 60)):
    """The gr.Blocks app (not launched)."""
    title = title or f"instit-edge demo: {engine.name}"
    variants = engine.variants()
    llm0, vision0 = engine.variant

    def close_view(view):
        if view is not None:
            view.close()

    with gr.Blocks(title=title, delete_cache=delete_cache, analytics_enabled=False) as demo:
        view_state = gr.State(None, time_to_live=3600, delete_callback=close_view)
        corner_state = gr.State(None)
        gr.Markdown(f"## {title}\n{HELP}")
        status = gr.Markdown("Checking the camera…", elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                               webcam_options=gr.WebcamOptions(
                                   mirror=False,  # the model must see the scene as it is (left is left)
                                   constraints={"video": {"width": {"ideal": 640}, "height": {"ideal": 480}}}), elem_id="camera", height=300)
                marked = gr.Image(label="Marked (click two corners to add a mark)", interactive=False,
                                  format="jpeg", elem_id="marked", height=360)
                instances = gr.Markdown(instances_markdown([]), elem_id="instances")
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Instance Q&A", elem_id="chat", height=360, render_markdown=False,
                                  feedback_options=None, buttons=[])
                with gr.Row():
                    question = gr.Textbox(placeholder="What is [1] doing?", show_label=False, scale=5,
                                          elem_id="question", max_lines=3)
                    ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                hold = gr.Checkbox(label="Hold the current frame for questions (repeat questions reuse its encoding)",
                                   value=False, elem_id="hold")
                gallery = gr.Gallery(label="Keyframes <1>..<N> (oldest first)", columns=8, height=130,
                                     allow_preview=False, elem_id="keyframes", format="jpeg")
                latency = gr.Markdown(latency_markdown(engine.latency()), elem_id="latency")
        with gr.Row():
            with gr.Column():
                box = gr.Textbox(label="Manual mark: x0,y0,x1,y1 in pixels of the marked frame", elem_id="box",
                                 placeholder="e.g. 100,80,220,200")
                with gr.Row():
                    add_btn = gr.Button("Add mark", elem_id="add-mark")
                    clear_btn = gr.Button("Clear manual marks", elem_id="clear-marks")
            with gr.Column():
                llm_dd = gr.Dropdown(variants["llm"], value=llm0, label="LLM variant", elem_id="llm-variant")
                vis_dd = gr.Dropdown(variants["vision"], value=vision0, label="Vision variant",
                                     elem_id="vision-variant")

        # ---- frames
        def on_frame(frame, view):
            if view is None:
                view = engine.new_view()
            try:
                res = engine.process(view, frame)
            except InstitError as e:
                view.error = e.message
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {e.message}", view
            msg = gr.skip()
            if view.error or view.frames == 1:
                view.error = None
                msg = "Streaming: marks follow the instances; ask away."
            gal = keyframe_gallery(view) if res.new_keyframe else gr.skip()
            lat = latency_markdown(engine.latency(view)) if view.frames % 10 == 1 else gr.skip()
            return res.image, instances_markdown(res.instances), gal, lat, msg, view

        cam.stream(on_frame, [cam, view_state], [marked, instances, gallery, latency, status, view_state],
                   stream_every=stream_every, concurrency_limit=2, concurrency_id="frames", show_progress="hidden",
                   time_limit=None, api_visibility="private")

        # ---- questions
        def on_question(q, history, view):
            history = list(history or [])
            q = (q or "").strip()
            if not q:
                yield history, "", gr.skip()
                return
            history += [{"role": "user", "content": q}, {"role": "assistant", "content": "…"}]
            yield history, "", gr.skip()
            if view is None:
                history[-1] = {"role": "assistant", "content": "No camera frame yet: start the webcam (the record "
                                                                "button under the camera), then ask."}
                yield history, "", gr.skip()
                return
            for text in engine.answer(view, q):
                history[-1] = {"role": "assistant", "content": text}
                yield history, "", gr.skip()
            yield history, "", latency_markdown(engine.latency(view))

        for trigger in (question.submit, ask_btn.click):
            trigger(on_question, [question, chat, view_state], [chat, question, latency],
                    concurrency_limit=1, concurrency_id="model", show_progress="hidden", api_visibility="private")

        def on_hold(on, view):
            if view is None:
                return "No camera frame yet: start the webcam first." if on else gr.skip()
            kf = view.hold(bool(on))
            if on and kf is not None:
                engine.prefetch_held(view)
                return f"Questions now use frame {kf.frame} (held); untick to go back to the live frame."
            return "Questions use the live frame."

        hold.change(on_hold, [hold, view_state], [status], api_visibility="private", show_progress="hidden")

        # ---- manual marks
        def on_add(text, view):
            if view is None:
                return "⚠️ No camera frame yet: start the webcam, then add a mark.", gr.skip()
            try:
                return view.add_mark(text), ""
            except InstitError as e:
                return f"⚠️ {e.message}", gr.skip()

        add_btn.click(on_add, [box, view_state], [status, box], api_visibility="private")
        box.submit(on_add, [box, view_state], [status, box], api_visibility="private")

        def on_clear(view):
            return view.clear_marks() if view is not None else "no manual marks"

        clear_btn.click(on_clear, [view_state], [status], api_visibility="private")

        def on_click(corner, evt: gr.SelectData):
            x, y = (int(v) for v in evt.index[:2])
            if corner is None:
                return f"first corner at {x},{y}: click the opposite corner", (x, y), gr.skip()
            (a, b) = corner
            x0, x1 = sorted((a, x))
            y0, y1 = sorted((b, y))
            return "box ready: press “Add mark”", None, f"{x0},{y0},{x1},{y1}"

        marked.select(on_click, [corner_state], [status, corner_state, box], api_visibility="private")

        # ---- variants
        def on_variant(llm, vision, view):
            try:
                msg = engine.switch(llm, vision)
            except InstitError as e:
                cur_llm, cur_vis = engine.variant
                return f"⚠️ {e.message}", cur_llm, cur_vis, gr.skip()
            return msg, gr.skip(), gr.skip(), latency_markdown(engine.latency(view))

        for dd in (llm_dd, vis_dd):
            dd.input(on_variant, [llm_dd, vis_dd, view_state], [status, llm_dd, vis_dd, latency],
                     concurrency_limit=1, concurrency_id="model", api_visibility="private")

        demo.load(None, None, [status], js=CAMERA_CHECK_JS)
    return demo


@dataclass
class DemoServer:
    """A launched demo: ``url``; ``close()`` stops the server and deletes the temporary folder."""

    app: object
    engine: DemoEngine
    url: str
    temp_dir: str
    _env_before: str | None = None
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.app.close()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if os.environ.get("GRADIO_TEMP_DIR") == self.temp_dir:
                if self._env_before is None:
                    os.environ.pop("GRADIO_TEMP_DIR", None)
                else:
                    os.environ["GRADIO_TEMP_DIR"] = self._env_before

    def wait(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then close (the temporary folder goes with it)."""
        import signal
        import threading

        stop = threading.Event()
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.is_set() and getattr(self.app, "is_running", True):
                stop.wait(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            self.close()

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def launch(engine: DemoEngine, *, host: str = "127.0.0.1", port: int | None = None,
           auth: tuple[str, str] | None = None, queue_size: int = 16, stream_every: float = 0.1,
           quiet: bool = True) -> DemoServer:
    """Build and start the app in background threads; ``server.wait()`` serves until Ctrl-C, ``close()`` stops."""
    if queue_size < 1:
        raise InstitError(f"the queue size must be at least 1 (got {queue_size})")
    env_before = os.environ.get("GRADIO_TEMP_DIR")
    temp_dir = tempfile.mkdtemp(prefix="instit-demo-")
    # Gradio writes every frame it sends to the browser into this folder; it is private to this run,
    # pruned while running (delete_cache) and removed on close.
    os.environ["GRADIO_TEMP_DIR"] = temp_dir
    try:
        demo = build_app(engine, stream_every=stream_every)
        demo.queue(max_size=queue_size, default_concurrency_limit=1)
        try:
            _, url, _ = demo.launch(server_name=host, server_port=port, auth=auth, share=False,
                                    prevent_thread_lock=True, quiet=quiet, show_error=False, inbrowser=False,
                                    max_file_size="8mb",
                                    footer_links=[], mcp_server=False, ssr_mode=False, pwa=False,
                                    enable_monitoring=False, css=CSS, theme=gr.themes.Default())
        except OSError as e:
            raise InstitError(f"cannot serve on {host}:{port or 'auto'}: {e} (choose another --port)") from None
        return DemoServer(demo, engine, url, temp_dir, env_before)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if env_before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = env_before
        raise
