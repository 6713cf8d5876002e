"""Inst-IT Bench / Dataset readers and writers, and the synthetic world that feeds them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instit_edge.data.bench import detect_layout, load_bench, write_bench_json, write_bench_parquet
from instit_edge.data.dataset import load_instit_dataset, write_instit_dataset
from instit_edge.data.records import BenchItem, ImageRecord, VideoRecord
from instit_edge.data.synth import build_world, world_units
from instit_edge.errors import InstitError
from instit_edge.prompting import find_ids, find_timestamps

N_IMAGES, N_VIDEOS = 8, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "world"
    ticks = []
    summary, items, records = build_world(out, seed=1, n_images=N_IMAGES, n_videos=N_VIDEOS,
                                          progress=ticks.append, return_records=True)
    assert sum(ticks) == world_units(N_IMAGES, N_VIDEOS)
    return out.resolve(), summary, items, records


def _one_line_error(fn, *needles):
    with pytest.raises(InstitError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def test_world_layout_and_summary(world):
    out, summary, items, records = world
    for name in ("image_multi_choices.json", "image_open_ended.json", "video_multi_choices.json",
                 "video_open_ended.json"):
        assert (out / "bench" / name).is_file()
    for cfg in ("image_multi_choice", "image_open_ended", "video_multi_choice", "video_open_ended"):
        assert (out / "bench_parquet" / cfg / "test-00000-of-00001.parquet").is_file()
    assert (out / "dataset" / "inst_it_dataset_image.json").is_file()
    assert (out / "dataset" / "inst_it_dataset_video.json").is_file()
    assert detect_layout(out / "bench") == "json"
    assert detect_layout(out / "bench_parquet") == "parquet"
    assert summary["bench"]["image_mc"] == summary["bench"]["image_oe"] >= N_IMAGES * 3
    assert summary["bench"]["video_mc"] == summary["bench"]["video_oe"] >= N_VIDEOS * 3
    assert summary["dataset"] == {"images": N_IMAGES, "videos": N_VIDEOS, "qa_pairs": summary["dataset"]["qa_pairs"]}
    assert len(items) == sum(summary["bench"].values())
    assert len(records) == N_IMAGES + N_VIDEOS


def test_bench_json_round_trip(world):
    out, _, items, _ = world
    loaded = load_bench(out / "bench")
    assert loaded == items
    assert all(it.image_path.is_file() for it in loaded if it.split == "image")
    assert all(4 <= len(it.frame_paths) <= 16 for it in loaded if it.split == "video")
    assert [it.question_id for it in load_bench(out / "bench", split="video", fmt="oe")] == [
        it.question_id for it in items if (it.split, it.format) == ("video", "oe")]


def _strip_paths(it: BenchItem) -> BenchItem:
    return dataclasses.replace(it, image_path=None, video_path=None, frame_paths=[])


def test_bench_parquet_round_trip(world):
    out, _, items, _ = world
    loaded = load_bench(out / "bench_parquet")
    assert [_strip_paths(x) for x in loaded] == [_strip_paths(x) for x in items]
    for got, want in zip(loaded, items):
        if got.split == "image":
            assert got.image_path.parent == out / "bench_parquet" / ".decoded"
            assert got.image_path.read_bytes() == want.image_path.read_bytes()
        else:
            assert got.video_path == out / "bench_parquet" / "videos_vpt" / want.video_path.name
            assert [p.name for p in got.frame_paths] == [p.name for p in want.frame_paths]
            assert all(a.read_bytes() == b.read_bytes() for a, b in zip(got.frame_paths, want.frame_paths))
    # images are decoded once: a second load reuses the cached files
    decoded = sorted((out / "bench_parquet" / ".decoded").iterdir())
    stamps = [p.stat().st_mtime_ns for p in decoded]
    assert len(decoded) == N_IMAGES
    load_bench(out / "bench_parquet", split="image")
    assert [p.stat().st_mtime_ns for p in decoded] == stamps
    # hub field names
    cols = pq.read_schema(out / "bench_parquet" / "image_multi_choice" / "test-00000-of-00001.parquet").names
    assert {"question_id", "question", "answer", "choice_a", "choice_b", "choice_c", "choice_d", "image"} <= set(cols)
    cols = pq.read_schema(out / "bench_parquet" / "video_open_ended" / "test-00000-of-00001.parquet").names
    assert {"question_id", "question", "answer", "video_path"} <= set(cols) and "choice_a" not in cols


def test_bench_writers_round_trip_elsewhere(world, tmp_path):
    """Writing loaded items to a new root copies the media and reads back the same questions."""
    out, _, items, _ = world
    write_bench_json(items, tmp_path / "j", media_root=out / "bench")
    write_bench_parquet(items, tmp_path / "p", media_root=out / "bench")
    for root in (tmp_path / "j", tmp_path / "p"):
        assert [_strip_paths(x) for x in load_bench(root)] == [_strip_paths(x) for x in items]
    assert (tmp_path / "j" / "images_vpt" / "001.jpg").is_file()


def test_parquet_without_extra_columns_derives_source_id(world, tmp_path):
    out, _, items, _ = world
    root = tmp_path / "hub"
    shutil.copytree(out / "bench_parquet", root)
    f = root / "image_multi_choice" / "test-00000-of-00001.parquet"
    table = pq.read_table(f).drop_columns(["image_id", "category"])
    pq.write_table(table, f)
    loaded = load_bench(root, split="image", fmt="mc")
    want = [it for it in items if (it.split, it.format) == ("image", "mc")]
    assert [x.source_id for x in loaded] == [x.source_id for x in want]
    assert all(x.category is None for x in loaded)


def test_dataset_round_trip(world, tmp_path):
    out, _, _, records = world
    loaded = load_instit_dataset(out / "dataset")
    assert loaded == records
    assert load_instit_dataset(out / "dataset" / "inst_it_dataset_video.json") == [
        r for r in records if isinstance(r, VideoRecord)]
    write_instit_dataset(loaded, tmp_path / "copy")
    again = load_instit_dataset(tmp_path / "copy")
    assert len(again) == len(records)
    for a, b in zip(again, records):
        if isinstance(a, ImageRecord):
            assert dataclasses.replace(a, image_path=b.image_path) == b
            assert a.image_path.read_bytes() == b.image_path.read_bytes()
        else:
            assert dataclasses.replace(a, video_path=b.video_path) == b
            assert [p.read_bytes() for p in a.frame_paths] == [p.read_bytes() for p in b.frame_paths]


def test_dataset_captions_follow_inst_it_conventions(world):
    _, _, _, records = world
    videos = [r for r in records if isinstance(r, VideoRecord)]
    images = [r for r in records if isinstance(r, ImageRecord)]
    assert videos and images
    for v in videos:
        assert v.frames[0].temporal_change is None
        assert all(f.temporal_change for f in v.frames[1:])
        assert [f.timestamp for f in v.frames] == list(range(1, len(v.frames) + 1))
        assert 4 <= len(v.frames) <= 16
        assert find_ids(v.video_level_caption) and find_timestamps(v.video_level_caption)
        assert v.question_answer_pairs
        for f in v.frames:
            assert set(f.instance_level) == {str(i) for i in find_ids(f.image_level)}
    for im in images:
        assert 2 <= len(im.instance_level_caption) <= 6
        assert sorted(map(int, im.instance_level_caption)) == list(range(1, len(im.instance_level_caption) + 1))


# --------------------------------------------------------------------------
# question quality
# --------------------------------------------------------------------------


def test_mc_answers_balanced_and_options_distinct(world):
    _, _, items, _ = world
    for split in ("image", "video"):
        mc = [it for it in items if it.split == split and it.format == "mc"]
        counts = Counter(it.answer for it in mc)
        assert set(counts) <= set("ABCD")
        assert max(counts.values()) - min(counts[L] for L in "ABCD") <= 1, counts
        for it in mc:
            assert list(it.options) == list("ABCD")
            assert len(set(it.options.values())) == 4, it
            assert it.category


def test_mc_and_oe_pair_up(world):
    _, _, items, _ = world
    mc = {(it.split, it.question_id): it for it in items if it.format == "mc"}
    oe = {(it.split, it.question_id): it for it in items if it.format == "oe"}
    assert mc.keys() == oe.keys()
    for key, m in mc.items():
        o = oe[key]
        assert o.options is None and o.category == m.category and o.question == m.question
        correct = m.options[m.answer]
        # the OE answer names every instance / frame the correct option names
        assert set(find_ids(correct)) <= set(find_ids(o.answer)), (correct, o.answer)
        assert set(find_timestamps(correct)) <= set(find_timestamps(o.answer)), (correct, o.answer)
        if m.category not in ("count",):
            assert find_ids(m.question + " " + correct), m
    cats = {it.category for it in items}
    assert {"color", "shape", "count"} <= cats
    assert {"appear", "disappear", "movement", "change"} & cats


def test_answers_agree_with_ground_truth(world):
    out, _, items, _ = world
    gt = json.loads((out / "ground_truth.json").read_text())["bench"]
    checked = Counter()
    for it in items:
        if it.format != "mc":
            continue
        correct = it.options[it.answer]
        if it.split == "image":
            insts = gt["images"][it.source_id]["instances"]
            ids = find_ids(it.question)
            if it.category in ("color", "shape", "position"):
                assert insts[str(ids[0])][it.category] == correct, it
                checked[it.category] += 1
            elif it.category == "count":
                word = it.question.split()[2]
                n = sum(1 for v in insts.values() if v["color"] == word or v["shape"] + "s" == word
                        or v["shape"] + "es" == word)
                assert str(n) == correct, it
                checked["count"] += 1
        else:
            video = gt["videos"][it.source_id]
            tracks = video["tracks"]
            if it.category == "appear":
                (t, _), = find_timestamps(correct)
                assert tracks[str(find_ids(it.question)[0])]["appear"] == t
                checked["appear"] += 1
            elif it.category == "disappear":
                (t, _), = find_timestamps(it.question)
                assert tracks[str(find_ids(correct)[0])]["disappear"] == t
                checked["disappear"] += 1
            elif it.category == "count":
                (t, _), = find_timestamps(it.question)
                assert str(len(video["frames"][t - 1]["instances"])) == correct
                checked["vcount"] += 1
            elif it.category == "movement":
                i = str(find_ids(it.question)[0])
                (s, _), (e, _) = find_timestamps(it.question)
                (x0, y0), (x1, y1) = (video["frames"][k - 1]["instances"][i]["center"] for k in (s, e))
                want = {"left": x1 < x0, "right": x1 > x0, "up": y1 < y0, "down": y1 > y0,
                        "it does not move": (x0, y0) == (x1, y1)}[correct]
                assert want, it
                checked["movement"] += 1
    assert sum(checked.values()) >= 10, checked


def test_determinism(tmp_path, world):
    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and ".decoded" not in p.parts}

    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    build_world(a, seed=7, n_images=3, n_videos=1)
    build_world(b, seed=7, n_images=3, n_videos=1)
    build_world(c, seed=8, n_images=3, n_videos=1)
    da, db, dc = digest(a), digest(b), digest(c)
    assert da == db
    assert da != dc
    # a scene does not depend on how many others are generated
    d = tmp_path / "d"
    build_world(d, seed=1, n_images=2, n_videos=1)
    assert (d / "bench/images_vpt/001.jpg").read_bytes() == (world[0] / "bench/images_vpt/001.jpg").read_bytes()


def test_build_world_refuses_to_overwrite(tmp_path):
    out = tmp_path / "w"
    build_world(out, seed=0, n_images=1, n_videos=0)
    _one_line_error(lambda: build_world(out, seed=0, n_images=1, n_videos=0), str(out), "--force")
    build_world(out, seed=1, n_images=1, n_videos=0, force=True)
    assert json.loads((out / "ground_truth.json").read_text())["seed"] == 1
    _one_line_error(lambda: build_world(tmp_path / "x", n_images=0, n_videos=0), "at least one")


# --------------------------------------------------------------------------
# bad inputs: one-line InstitError naming the file and item
# --------------------------------------------------------------------------


@pytest.fixture
def bench_copy(world, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(world[0] / "bench", root)
    return root


def _edit(path: Path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_bench_malformed_json(bench_copy):
    f = bench_copy / "image_open_ended.json"
    f.write_text(f.read_text()[:-40])
    _one_line_error(lambda: load_bench(bench_copy), "image_open_ended.json", "not valid JSON")


def test_bench_missing_field(bench_copy):
    f = bench_copy / "image_multi_choices.json"
    _edit(f, lambda d: d[2].pop("question"))
    _one_line_error(lambda: load_bench(bench_copy), "image_multi_choices.json", "001-03", "'question'")
    _edit(f, lambda d: d[0].pop("question_id"))
    _one_line_error(lambda: load_bench(bench_copy), "image_multi_choices.json", "item 0", "question_id")


def test_bench_duplicate_question_id(bench_copy):
    f = bench_copy / "video_open_ended.json"
    _edit(f, lambda d: d.__setitem__(1, dict(d[1], question_id=d[0]["question_id"])))
    _one_line_error(lambda: load_bench(bench_copy), "video_open_ended.json", "001-01", "duplicate")


def test_bench_mc_answer_not_an_option(bench_copy):
    f = bench_copy / "image_multi_choices.json"
    _edit(f, lambda d: d[0].update(answer="E"))
    _one_line_error(lambda: load_bench(bench_copy), "image_multi_choices.json", "001-01", "'E'")


def test_bench_missing_image(bench_copy):
    (bench_copy / "images_vpt" / "002.jpg").unlink()
    _one_line_error(lambda: load_bench(bench_copy, split="image"), "image_multi_choices.json", "002-01", "002.jpg")


def test_bench_missing_frame_folder(bench_copy):
    shutil.rmtree(bench_copy / "videos_vpt" / "002")
    _one_line_error(lambda: load_bench(bench_copy, split="video"), "video_multi_choices.json", "002-01",
                    "videos_vpt/002")


def test_bench_video_without_frames(bench_copy):
    for p in (bench_copy / "videos_vpt" / "001").iterdir():
        p.unlink()
    _one_line_error(lambda: load_bench(bench_copy, split="video"), "video_multi_choices.json", "001-01",
                    "no frames")


def test_bench_frame_reference_past_the_end(bench_copy):
    f = bench_copy / "video_open_ended.json"
    n = len(list((bench_copy / "videos_vpt" / "001").iterdir()))
    _edit(f, lambda d: d[0].update(answer=f"[1] leaves at <{n + 1}>."))
    _one_line_error(lambda: load_bench(bench_copy, fmt="oe"), "video_open_ended.json", "001-01", f"<{n + 1}>",
                    f"{n} frames")
    _edit(f, lambda d: d[0].update(answer="[1] is there.", question=f"What happens in <2>-<{n + 3}>?"))
    _one_line_error(lambda: load_bench(bench_copy, fmt="oe"), "question refers", f"<2>-<{n + 3}>")


def test_bench_wrong_top_level_and_empty_root(bench_copy, tmp_path):
    (bench_copy / "image_open_ended.json").write_text('{"question_id": "x"}')
    _one_line_error(lambda: load_bench(bench_copy), "image_open_ended.json", "list")
    _one_line_error(lambda: load_bench(tmp_path / "nothing"), "nothing", "not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: load_bench(tmp_path / "empty"), "empty", "no Inst-IT Bench files")
    _one_line_error(lambda: load_bench(bench_copy, split="audio"), "audio")


def test_bench_parquet_bad_inputs(world, tmp_path):
    import pyarrow as pa

    root = tmp_path / "pq"
    shutil.copytree(world[0] / "bench_parquet", root)
    f = root / "image_multi_choice" / "test-00000-of-00001.parquet"
    table = pq.read_table(f)
    qids = table.column("question_id").to_pylist()
    pq.write_table(table.set_column(0, "question_id", pa.array([qids[0]] + qids[1:2] * (len(qids) - 1))), f)
    _one_line_error(lambda: load_bench(root, split="image"), "test-00000-of-00001.parquet", qids[1], "duplicate")
    answers = table.column("answer").to_pylist()
    pq.write_table(table.set_column(table.schema.get_field_index("answer"), "answer",
                                    pa.array(["Z"] + answers[1:])), f)
    _one_line_error(lambda: load_bench(root, split="image"), "image_multi_choice", qids[0], "'Z'")
    pq.write_table(table.drop_columns(["question"]), f)
    _one_line_error(lambda: load_bench(root, split="image"), "image_multi_choice", qids[0], "'question'")
    f.write_bytes(b"not a parquet file")
    _one_line_error(lambda: load_bench(root, split="image"), "image_multi_choice", "cannot read parquet")
    shutil.rmtree(root / "videos_vpt" / "001")
    _one_line_error(lambda: load_bench(root, split="video"), "video_multi_choice", "001-01", "not found")


@pytest.fixture
def dataset_copy(world, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(world[0] / "dataset", root)
    return root


def test_dataset_missing_field(dataset_copy):
    f = dataset_copy / "inst_it_dataset_video.json"
    _edit(f, lambda d: d[1].pop("video_level_caption"))
    _one_line_error(lambda: load_instit_dataset(dataset_copy), "inst_it_dataset_video.json", "video 002",
                    "video_level_caption")
    _edit(f, lambda d: d[0]["frame_level_caption"][1].pop("frame_name"))
    _one_line_error(lambda: load_instit_dataset(f), "inst_it_dataset_video.json", "video 001 frame 2",
                    "frame_name")
    g = dataset_copy / "inst_it_dataset_image.json"
    _edit(g, lambda d: d[3].pop("image_level_caption"))
    _one_line_error(lambda: load_instit_dataset(g), "inst_it_dataset_image.json", "image 004", "image_level_caption")


def test_dataset_missing_frame_file(dataset_copy):
    (dataset_copy / "videos" / "002" / "frame_003.jpg").unlink()
    _one_line_error(lambda: load_instit_dataset(dataset_copy), "inst_it_dataset_video.json", "video 002",
                    "<3>", "frame_003.jpg")
    assert load_instit_dataset(dataset_copy, check_media=False)


def test_dataset_unknown_instance_id(dataset_copy):
    g = dataset_copy / "inst_it_dataset_image.json"
    _edit(g, lambda d: d[0].update(image_level_caption=d[0]["image_level_caption"] + " [9] is hiding."))
    _one_line_error(lambda: load_instit_dataset(g), "inst_it_dataset_image.json", "image 001", "[9]")
    f = dataset_copy / "inst_it_dataset_video.json"

    def bad_frame(d):
        fr = d[0]["frame_level_caption"][0]
        fr["instance_level"]["1"] += " It touches [42]."
    _edit(f, bad_frame)
    _one_line_error(lambda: load_instit_dataset(f), "inst_it_dataset_video.json", "video 001 frame <1>", "[42]")


def test_dataset_temporal_change_may_name_the_previous_frame(dataset_copy):
    """A disappearing instance is named in temporal_change although it is absent from that frame."""
    recs = load_instit_dataset(dataset_copy / "inst_it_dataset_video.json")
    named_absent = [
        (v.video_id, f.timestamp) for v in recs for f in v.frames[1:]
        if set(map(str, find_ids(f.temporal_change))) - set(f.instance_level)
    ]
    assert named_absent, "the synthetic videos should contain a disappearance"


def test_dataset_malformed_and_missing(dataset_copy, tmp_path):
    f = dataset_copy / "inst_it_dataset_video.json"
    f.write_text("[{")
    _one_line_error(lambda: load_instit_dataset(f), "inst_it_dataset_video.json", "not valid JSON")
    _one_line_error(lambda: load_instit_dataset(tmp_path / "nope"), "nope", "not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: load_instit_dataset(tmp_path / "empty"), "empty", "inst_it_dataset_image.json")


def test_small_worlds_keep_every_instance_readable_around_its_label(tmp_path):
    """At 128 px the ID label is ~12 x 16 px: no instance, in an image or a video frame, may be more than
    half hidden under it (before the size floors, 47% were, and their colour and shape were unreadable)."""
    import numpy as np
    from PIL import Image

    build_world(tmp_path / "w", seed=int(np.random.default_rng().integers(10_000)), n_images=30, n_videos=3,
                image_size=(128, 128), n_train_images=1, n_train_videos=1)
    gt = json.loads((tmp_path / "w" / "ground_truth.json").read_text())
    views = [(e["mask_path"], e["instances"]) for e in gt["bench"]["images"].values()]
    views += [(f["mask_path"], f["instances"]) for v in gt["bench"]["videos"].values() for f in v["frames"]]
    shares = []
    for mask_path, instances in views:
        mask = np.asarray(Image.open(tmp_path / "w" / mask_path))
        for k, inst in instances.items():
            area = mask == int(k)
            if "label_rect" not in inst or not area.any():
                continue
            x0, y0, x1, y1 = inst["label_rect"]
            outside = area.copy()
            outside[y0:y1, x0:x1] = False
            shares.append(outside.sum() / area.sum())
    assert len(shares) > 80 and min(shares) >= 0.5, (len(shares), min(shares))


def test_restyled_bench_keeps_questions_and_redraws_marks(tmp_path):
    """The visual-prompt ablation: one seed in another mark style = the same questions, other pixels."""
    import hashlib
    import json

    from instit_edge.data.synth import build_world, restyle_bench
    from instit_edge.errors import InstitError

    build_world(tmp_path / "w", seed=4, n_images=3, n_videos=1, image_size=(128, 128), n_train_images=1,
                n_train_videos=1)
    bench = tmp_path / "w" / "bench"
    assert restyle_bench(bench, "mask+id", tmp_path / "same") == bench  # already in that style
    other = restyle_bench(bench, "box", tmp_path / "box")
    for name in ("image_multi_choices.json", "video_open_ended.json"):
        assert json.loads((bench / name).read_text()) == json.loads((other / name).read_text())

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(bench / "images_vpt" / "001.jpg") != digest(other / "images_vpt" / "001.jpg")
    assert restyle_bench(bench, "box", tmp_path / "box") == other  # reused
    (tmp_path / "plain").mkdir()
    with pytest.raises(InstitError, match="synthetic bench"):
        restyle_bench(tmp_path / "plain", "box", tmp_path / "x")
