"""On-device marker: detectors, ByteTrack-style IDs, per-frame output, LiveMarker, `instit-edge mark`.

Tracking quality is measured on synthetic videos with ground truth
(:mod:`instit_edge.marker.synthvideo`, built from the synthetic world's
shapes and colours, and the world's own videos re-rendered without marks).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from instit_edge.errors import InstitError
from instit_edge.marker.base import Detection, make_detector
from instit_edge.marker.instances import check_question, visible_ids
from instit_edge.marker.live import LiveMarker
from instit_edge.marker.manual import ManualDetector, parse_manual
from instit_edge.marker.pipeline import Marker
from instit_edge.marker.synthvideo import easy_set, moving_shapes, track_metrics, world_clips
from instit_edge.marker.tracker import ByteTracker

ROOT = Path(__file__).resolve().parents[1]


def _run(clip, marker: Marker):
    """Predicted ``{id: box}`` per frame and the raw detection count."""
    preds = []
    for f in clip.frames:
        mf = marker.process(f)
        preds.append({i.id: i.box for i in mf.instances})
    return preds


def _pooled(results):
    keys = ("gt_boxes", "pred_boxes", "matched", "id_switches")
    tot = {k: sum(r[k] for r in results) for k in keys}
    tot["recall"] = tot["matched"] / tot["gt_boxes"]
    tot["precision"] = tot["matched"] / max(1, tot["pred_boxes"])
    return tot


# --------------------------------------------------------------------------- tracking quality


def test_easy_set_motion_zero_id_switches_and_recall():
    """Well-separated moving shapes, camera started on the empty scene: no ID switch, recall >= 0.9."""
    results = []
    for clip in easy_set(n_clips=3, size=(320, 240), n_frames=45, warmup=4):
        m = _run(clip, Marker("motion", draw=False))
        r = track_metrics(clip.gt, m)
        results.append(r)
        assert r["id_switches"] == 0, (clip.name, r)
        assert all(len(v) == 1 for v in r["ids_per_track"].values()), (clip.name, r["ids_per_track"])
        ids = sorted(v[0] for v in r["ids_per_track"].values())
        assert ids == list(range(1, len(ids) + 1))  # IDs start at 1, no number wasted on noise
    tot = _pooled(results)
    print("easy set (motion):", tot)
    assert tot["recall"] >= 0.9 and tot["precision"] >= 0.95 and tot["id_switches"] == 0


def test_objects_in_first_frame_ghosts_suppressed():
    """Objects already in view when the camera starts: once they have moved off their start, no ghost tracks."""
    results = []
    for seed in (21, 22):
        clip = moving_shapes(seed, n_objects=3, n_frames=60, size=(320, 240), speed=(3, 5))
        preds = _run(clip, Marker("motion", draw=False))
        results.append(track_metrics(clip.gt[30:], preds[30:]))
    tot = _pooled(results)
    assert tot["recall"] >= 0.9 and tot["precision"] >= 0.9, tot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from instit_edge.data.synth import build_world

    out = tmp_path_factory.mktemp("marker") / "world"
    build_world(out, seed=3, n_images=0, n_videos=6, n_train_images=0, n_train_videos=0)
    return out


def test_world_videos_static_detector(world):
    """The synthetic world's videos (big jumps, appear / disappear, still objects), re-rendered unmarked."""
    clips = world_clips(world)
    assert len(clips) == 6
    results = []
    for clip in clips:
        preds = _run(clip, Marker("static", draw=False))
        r = track_metrics(clip.gt, preds)
        results.append(r)
        assert r["id_switches"] == 0, (clip.name, r)
    tot = _pooled(results)
    print("world videos (static):", tot)
    assert tot["recall"] >= 0.9 and tot["precision"] >= 0.95


@pytest.mark.parametrize("detector", ["motion", "static"])
def test_short_occlusion_keeps_id(detector):
    clip = moving_shapes(11, n_objects=3, n_frames=70, size=(320, 240), warmup=4, hidden={0: range(25, 33)})
    assert 1 not in clip.gt[28]
    r = track_metrics(clip.gt, _run(clip, Marker(detector, draw=False)))
    assert r["id_switches"] == 0 and all(len(v) == 1 for v in r["ids_per_track"].values()), r
    assert r["recall"] >= 0.9


def test_ids_never_reused_after_long_occlusion():
    clip = moving_shapes(11, n_objects=3, n_frames=80, size=(320, 240), warmup=4, hidden={0: range(25, 55)})
    tracker = ByteTracker(max_lost=10)
    marker = Marker("static", draw=False, tracker=tracker)
    seen_last: dict[int, int] = {}
    first_seen: dict[int, int] = {}
    for k, f in enumerate(clip.frames):
        for inst in marker.process(f).instances:
            first_seen.setdefault(inst.id, k)
            seen_last[inst.id] = k
    r = track_metrics(clip.gt, _run(clip, Marker("static", draw=False, tracker=ByteTracker(max_lost=10))))
    old, new = r["ids_per_track"][1]
    assert new > old and new == tracker.ids_issued  # a fresh number, the newest one
    assert seen_last[old] < 25 and first_seen[new] >= 55  # the retired ID never comes back
    assert sorted(first_seen) == list(range(1, tracker.ids_issued + 1))
    tracker.reset()  # a new video in the same session: numbering continues
    out = tracker.update([Detection((10, 10, 50, 50), score=0.9)])
    assert out[0].id == 5


# --------------------------------------------------------------------------- tracker unit behaviour


def test_tracker_two_stage_and_no_ids_for_noise():
    t = ByteTracker()
    assert [i.id for i in t.update([Detection((10, 10, 50, 50), score=0.9)])] == [1]  # first frame: confirmed
    # a low-score detection continues the track (stage 2) but would never start one
    out = t.update([Detection((12, 10, 52, 50), score=0.3), Detection((200, 200, 240, 240), score=0.3)])
    assert [i.id for i in out] == [1]
    # one-frame noise (a high-score blob that does not come back) gets no ID
    t.update([Detection((14, 10, 54, 50), score=0.9), Detection((300, 10, 330, 40), score=0.9)])
    out = t.update([Detection((16, 10, 56, 50), score=0.9)])
    assert [i.id for i in out] == [1] and t.ids_issued == 1
    inst = out[0]
    assert inst.first_seen == 0 and inst.last_seen == 3 and inst.box == (16, 10, 56, 50)
    # a new object seen twice is confirmed with the next number
    t.update([Detection((18, 10, 58, 50), score=0.9), Detection((100, 100, 140, 140), score=0.8)])
    out = t.update([Detection((20, 10, 60, 50), score=0.9), Detection((102, 100, 142, 140), score=0.8)])
    assert [i.id for i in out] == [1, 2] and out[1].first_seen == 5


def test_tracker_keeps_ids_when_shapes_pass_close():
    """Two objects moving past each other on parallel lanes keep their IDs (Kalman prediction + Hungarian)."""
    t = ByteTracker()
    history = {1: set(), 2: set()}
    for k in range(40):
        a = (10 + 6 * k, 50, 50 + 6 * k, 90)
        b = (260 - 6 * k, 95, 300 - 6 * k, 135)
        for inst in t.update([Detection(a, score=0.9), Detection(b, score=0.9)]):
            history[1 if inst.box[1] == 50 else 2].add(inst.id)
    assert history == {1: {1}, 2: {2}}


# --------------------------------------------------------------------------- per-frame output


def test_instances_visible_ids_and_question_check():
    insts = [Detection((0, 0, 5, 5), id=3), Detection((5, 5, 9, 9), mask=np.ones((10, 10), bool), id=1)]
    assert visible_ids(insts) == [1, 3]
    check_question("What is [1] next to [3]?", insts)
    with pytest.raises(InstitError) as e:
        check_question("Is [2] left of [1]?", insts)
    msg = str(e.value)
    assert "[2]" in msg and "[1] [3]" in msg and "\n" not in msg
    with pytest.raises(InstitError, match="no instances"):
        check_question("What is [1]?", [])
    d = insts[1].to_dict()
    assert d["mask_area"] == 100 and d["box"] == [5, 5, 9, 9] and json.dumps(d)


def test_marker_output_and_styles():
    clip = moving_shapes(3, n_objects=2, n_frames=12, size=(160, 120), warmup=2, with_masks=True)
    for style in ("box+id", "id", "box", "mask+id", "none"):
        m = Marker("motion", style=style)
        for f in clip.frames:
            mf = m.process(f)
        assert mf.ids == [1, 2]
        assert mf.image.shape == f.shape and mf.image.dtype == np.uint8
        assert (mf.image != f).any() == (style != "none")
        assert all((i.mask is not None) == (style == "mask+id") for i in mf.instances)
        assert set(mf.timings) >= {"detect_ms", "track_ms", "render_ms"}
        row = mf.to_dict()
        assert row["frame"] == 11 and row["ids"] == [1, 2] and len(row["instances"]) == 2
    with pytest.raises(InstitError, match="frame 11|marked instances are"):
        mf.check_question("What is [7]?")
    with pytest.raises(InstitError, match="unknown mark style"):
        Marker("motion", style="fancy")
    with pytest.raises(InstitError, match="unknown detector"):
        Marker("yolo")
    with pytest.raises(InstitError, match="RGB uint8"):
        Marker("motion").process(np.zeros((10, 10), np.float32))


def test_manual_boxes_followed_by_kcf():
    clip = moving_shapes(5, n_objects=2, n_frames=25, size=(320, 240), speed=(2, 3), texture=20, noise=1)
    g0 = clip.gt[0]
    spec = ";".join(",".join(str(v) for v in g0[k]) for k in (2, 1))  # order given by the user = ID order
    m = Marker(f"manual:{spec}", draw=False)
    preds = _run(clip, m)
    assert sorted(preds[0]) == [1, 2] and preds[0][1] == tuple(g0[2])
    r = track_metrics(clip.gt, preds, iou=0.4)
    assert r["id_switches"] == 0 and r["recall"] >= 0.8, r
    assert r["ids_per_track"] == {2: [1], 1: [2]}
    assert parse_manual("10,20;0,0,30,40", point_box=10) == [(5, 15, 15, 25), (0, 0, 30, 40)]
    for bad in ("1,2,3", "5,5,1,1", "a,b", ""):
        with pytest.raises(InstitError):
            make_detector(f"manual:{bad}") if bad else parse_manual(bad)
    with pytest.raises(InstitError, match="outside"):
        ManualDetector([(500, 500, 600, 600)])(clip.frames[0])


# --------------------------------------------------------------------------- ONNX YOLO


def _yolo_onnx(path: Path, out: np.ndarray, names=None, size: int = 64, meta=None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["z"]),
             helper.make_node("Add", ["det", "z"], ["output0"])]
    graph = helper.make_graph(nodes, "tiny_yolo", [x], [y],
                              initializer=[numpy_helper.from_array(out.astype(np.float32), "det"),
                                           numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = dict(meta or {})
    if names is not None:
        props["names"] = repr(dict(enumerate(names)))
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# model-space (64x64 input) boxes as cx, cy, w, h; the 128x96 frame is letterboxed with scale 0.5, pad_y 8
_BOXES = [(32, 32, 20, 10), (33, 32, 20, 10), (10, 20, 8, 8)]


def _expected(cx, cy, w, h):
    return ((cx - w / 2) / 0.5, (cy - h / 2 - 8) / 0.5, (cx + w / 2) / 0.5, (cy + h / 2 - 8) / 0.5)


def test_onnx_yolo_v8_layout(tmp_path):
    n, nc = 8, 2
    out = np.zeros((1, 4 + nc, n), np.float32)
    for k, (cx, cy, w, h) in enumerate(_BOXES):
        out[0, :4, k] = (cx, cy, w, h)
    out[0, 4 + 1, 0] = 0.9  # dog
    out[0, 4 + 1, 1] = 0.8  # duplicate of the first box -> removed by NMS
    out[0, 4 + 0, 2] = 0.7  # cat
    out[0, 4 + 0, 3:] = 0.1  # below the confidence threshold
    det = make_detector(f"onnx:{_yolo_onnx(tmp_path / 'v8.onnx', out, names=['cat', 'dog'])}")
    dets = det(np.zeros((96, 128, 3), np.uint8))
    assert [d.label for d in dets] == ["dog", "cat"]
    assert np.allclose(dets[0].box, _expected(*_BOXES[0]), atol=0.01)
    assert np.allclose(dets[1].box, np.clip(_expected(*_BOXES[2]), 0, None), atol=0.01)
    assert dets[0].score == pytest.approx(0.9)


def test_onnx_yolo_v5_layout_and_default_names(tmp_path):
    n, nc = 8, 3
    out = np.zeros((1, n, 5 + nc), np.float32)
    out[0, 0, :5] = (*_BOXES[0], 0.9)
    out[0, 0, 5 + 2] = 0.8  # score = 0.9 * 0.8
    out[0, 1, :5] = (*_BOXES[2], 0.2)
    out[0, 1, 5] = 0.9  # 0.18: below 0.25
    det = make_detector(f"onnx:{_yolo_onnx(tmp_path / 'v5.onnx', out)}")
    dets = det(np.zeros((96, 128, 3), np.uint8))
    assert len(dets) == 1 and dets[0].label == "class2" and dets[0].score == pytest.approx(0.72)
    assert np.allclose(dets[0].box, _expected(*_BOXES[0]), atol=0.01)


def test_onnx_bad_models_one_line(tmp_path):
    with pytest.raises(InstitError, match="not a|YOLO detection layout") as e:
        make_detector(f"onnx:{_yolo_onnx(tmp_path / 'cls.onnx', np.zeros((1, 10), np.float32))}")
    assert "\n" not in str(e.value) and "[1, 10]" in str(e.value)
    with pytest.raises(InstitError, match="YOLO detection layout"):
        make_detector(f"onnx:{_yolo_onnx(tmp_path / 'odd.onnx', np.zeros((1, 3, 2), np.float32))}")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a model" * 50)
    with pytest.raises(InstitError, match="cannot load ONNX model") as e:
        make_detector(f"onnx:{tmp_path / 'junk.onnx'}")
    assert "\n" not in str(e.value)
    with pytest.raises(InstitError, match="not found"):
        make_detector(f"onnx:{tmp_path / 'missing.onnx'}")


# --------------------------------------------------------------------------- mediapipe (optional) + model cache


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed here")
@pytest.mark.parametrize("spec", ["face", "person"])
def test_mediapipe_detectors_say_what_to_install(spec):
    with pytest.raises(InstitError) as e:
        make_detector(spec)
    msg = str(e.value)
    assert "pip install 'instit-edge[demo]'" in msg and "instit-edge models" in msg and "\n" not in msg


def test_tflite_missing_model(tmp_path):
    with pytest.raises(InstitError, match="model file not found"):
        make_detector(f"tflite:{tmp_path / 'nope.tflite'}")


def test_models_extracted_from_wheel_offline(tmp_path):
    from instit_edge.marker.models import cached_models, extract_models, model_path

    wheel = tmp_path / "mediapipe-0.10.21-cp312-cp312-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mediapipe/modules/face_detection/face_detection_short_range.tflite", b"FACE" * 10)
        z.writestr("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", b"SELFIE" * 10)
        z.writestr("mediapipe/__init__.py", "")
    cache = tmp_path / "cache"
    assert cached_models(cache) == {"face": None, "person": None}
    with pytest.raises(InstitError, match="instit-edge models"):
        model_path("face", cache)
    found = extract_models(wheel, cache)
    assert found["face"].read_bytes() == b"FACE" * 10 and model_path("person", cache).is_file()
    manifest = json.loads((cache / "models.json").read_text())
    assert {m["name"] for m in manifest["models"]} == {"face", "person"} and all(len(m["sha256"]) == 64
                                                                               for m in manifest["models"])
    r = subprocess.run([sys.executable, "-m", "instit_edge.cli", "models", "--wheel", str(wheel), "--cache",
                        str(tmp_path / "c2")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"]["face"].endswith("face_detection_short_range.tflite")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(InstitError, match="has none of"):
        extract_models(empty, cache)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(InstitError, match="cannot read wheel"):
        extract_models(tmp_path / "bad.whl", cache)


# --------------------------------------------------------------------------- LiveMarker


def _paced(n: int, period: float, size=(160, 120)):
    """A fake camera: fresh frames every ``period`` seconds (after 3 empty frames, a red square moving right)."""
    w, h = size
    for k in range(n):
        f = np.full((h, w, 3), 70, np.uint8)
        if k >= 3:
            x = 10 + (k % 60) * 2
            f[40:70, x:x + 30] = (230, 40, 40)
        time.sleep(period)
        yield f


def test_live_slow_consumer_drops_stale_frames_bounded_memory():
    """A consumer 10x slower than the camera, in lock step rather than by sleeps (the counts do not depend on the
    machine's speed): the camera delivers a burst of 10 frames, then waits until the consumer has marked one."""
    frame_bytes = 160 * 120 * 3
    burst = 10
    burst_done, marked, finished = threading.Semaphore(0), threading.Semaphore(0), threading.Event()

    def camera():
        for k, f in enumerate(_paced(150, 0.0)):
            if k and k % burst == 0:
                burst_done.release()  # frames before k are queued or dropped
                assert marked.acquire(timeout=60), "the consumer stopped"  # a deadlock guard, not a timing
            yield f
        finished.set()
        burst_done.release()

    live = LiveMarker(camera(), detector="motion", queue_size=2, keyframes=4, keyframe_interval=0.05)
    assert live.drop_stale  # a generator is live
    live.marker.tracker.update([Detection((0, 0, 9, 9))] * 2)  # warm lazy imports before measuring
    live.marker.tracker.reset()
    tracemalloc.start()
    try:
        for _mf in live:  # one marked frame per burst (+ at most the 2 queued at the end)
            if not finished.is_set():
                assert burst_done.acquire(timeout=60), "the camera stopped"
            marked.release()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    s = live.stats
    assert s["captured"] == 150 and s["dropped"] > 60
    assert s["processed"] + s["dropped"] == s["captured"]
    assert s["max_queue"] <= 2 and s["keyframes"] <= 4
    assert peak < 40 * frame_bytes, f"peak {peak / 1e6:.1f} MB for 150 frames of {frame_bytes / 1e3:.0f} kB"
    assert live._thread is not None and not live._thread.is_alive()


def test_live_keyframes_questions_and_clean_stop():
    frames = [(k * 0.25, f) for k, f in enumerate(_paced(40, 0.0))]
    live = LiveMarker(iter(frames), detector="motion", drop_stale=False, keyframes=3, keyframe_interval=1.0)
    stats = live.run()
    assert stats["processed"] == 40 and stats["dropped"] == 0
    kfs = live.keyframes()
    assert [k.timestamp for k in kfs] == [7.0, 8.0, 9.0] and len(live.keyframe_images()) == 3
    assert live.video_ids() == [1]
    live.check_question("What does [1] do between <1> and <3>?", video=True)
    with pytest.raises(InstitError, match="3 frames"):
        live.check_question("What happens in <4>?", video=True)
    with pytest.raises(InstitError, match=r"\[1\]"):
        live.check_question("Where is [2]?")
    # stopping early from the consumer side ends the capture thread
    live2 = LiveMarker(_paced(10_000, 0.001), detector="motion")
    for k, _ in enumerate(live2):
        if k == 5:
            break
    live2._thread.join(2)
    assert not live2._thread.is_alive() and live2.processed == 6


def test_live_errors():
    def broken():
        yield np.zeros((48, 64, 3), np.uint8)
        raise InstitError("camera unplugged")

    with pytest.raises(InstitError, match="unplugged"):
        LiveMarker(broken(), detector="motion").run()
    with pytest.raises(InstitError, match="camera 57 cannot be opened"):
        LiveMarker(57)
    with pytest.raises(InstitError, match="queue_size"):
        LiveMarker([], queue_size=5)


def test_live_over_video_file_marks_every_frame(tmp_path):
    clip = moving_shapes(8, n_objects=2, n_frames=20, size=(160, 120), warmup=2)
    path = clip.write_video(tmp_path / "in.mp4")
    live = LiveMarker(str(path), detector="motion")
    assert not live.drop_stale
    assert live.run()["processed"] == 20 and live.latest.ids == [1, 2]


# --------------------------------------------------------------------------- `instit-edge mark`


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "instit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("markcli")
    clip = moving_shapes(4, n_objects=3, n_frames=30, size=(320, 240), warmup=3)
    return clip, clip.write_video(d / "in.mp4"), clip.write_frames(d / "frames"), d


def test_cli_mark_writes_playable_video_and_jsonl(clip_files):
    clip, video, _, d = clip_files
    r = _cli("mark", video, "--out", d / "marked.mp4", "--json", d / "inst.jsonl")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["frames"] == 30 and summary["ids"] == [1, 2, 3]
    cap = cv2.VideoCapture(str(d / "marked.mp4"))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        assert frame.shape == (240, 320, 3)
    cap.release()
    assert n == 30
    rows = [json.loads(line) for line in (d / "inst.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in rows] == list(range(30))
    preds = [{i["id"]: tuple(i["box"]) for i in row["instances"]} for row in rows]
    m = track_metrics(clip.gt, preds)
    assert m["recall"] >= 0.9 and m["id_switches"] == 0
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_cli_mark_frame_folder_options(clip_files):
    _, _, frames, d = clip_files
    r = _cli("mark", frames, "--json", d / "f.jsonl", "--detector", "static", "--style", "mask+id",
             "--max-frames", "12")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (d / "f.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["ids"] == [1, 2, 3] and "mask_area" in rows[-1]["instances"][0]


@pytest.mark.parametrize("case", ["camera", "corrupt", "missing", "detector", "onnx-layout", "style", "empty-dir"])
def test_cli_mark_bad_input_one_line(case, clip_files, tmp_path):
    video = clip_files[1]
    args = [video, "--out", tmp_path / "o.mp4"]
    if case == "camera":
        args[0] = "57"
    elif case == "corrupt":
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
        args[0] = bad
    elif case == "missing":
        args[0] = tmp_path / "nope.mp4"
    elif case == "detector":
        args += ["--detector", "yolo"]
    elif case == "onnx-layout":
        args += ["--detector", f"onnx:{_yolo_onnx(tmp_path / 'c.onnx', np.zeros((1, 10), np.float32))}"]
    elif case == "style":
        args += ["--style", "fancy"]
    elif case == "empty-dir":
        (tmp_path / "empty").mkdir()
        args[0] = tmp_path / "empty"
    r = _cli("mark", *args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_mark_video_from_a_live_stream(tmp_path):
    from instit_edge.marker.commands import mark_video

    def camera():  # a generator counts as a live source: read through LiveMarker
        yield from _paced(400, 0.003)

    s = mark_video(camera(), tmp_path / "cam.mp4", tmp_path / "cam.jsonl", max_frames=15)
    assert s["frames"] == 15 and "dropped" in s
    assert len((tmp_path / "cam.jsonl").read_text().splitlines()) == 15
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 15
    cap.release()


# --------------------------------------------------------------------------- mediapipe, for real (CI installs it)


@pytest.fixture(scope="module")
def mediapipe_models(tmp_path_factory):
    pytest.importorskip("mediapipe", reason="mediapipe comes with the [demo] extra")
    from instit_edge.marker.models import cached_models, fetch_models

    have = cached_models()
    if all(have.values()):
        return have
    # the package registry is reachable in CI: the models come from the mediapipe 0.10.21 wheel
    return fetch_models(tmp_path_factory.mktemp("mpcache"))


@pytest.mark.parametrize("kind", ["face", "person"])
def test_mediapipe_tasks_run_on_frames(mediapipe_models, kind):
    from instit_edge.marker.mediapipe_tasks import make_mediapipe_detector

    det = make_mediapipe_detector(kind, mediapipe_models[kind])
    try:
        rng = np.random.default_rng(0)
        frame = np.full((480, 640, 3), 40, np.uint8)
        frame[100:300, 200:400] = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
        out = det.detect(frame)
        assert isinstance(out, list)
        for d in out:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480 and 0 <= d.score <= 1
    finally:
        det.close()


def test_corrupt_tflite_is_one_line(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe comes with the [demo] extra")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" + b"\x00" * 64)
    with pytest.raises(InstitError) as e:
        make_detector(f"tflite:{bad}")
    assert "\n" not in str(e.value) and "bad.tflite" in str(e.value)
