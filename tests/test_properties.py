"""Property tests for the parsers that take user text: no input raises anything but InstitError.

Covered: question references (``[ID]``, ``<t>``, ``<s>-<e>``), UTF-8 checks,
multiple-choice answer extraction (official and strict), the bench readers
(JSON and parquet layouts), prediction files for ``score``, and
``bundle.json``. (The pinpoints live in ``bundle.json`` as ``[[h, w], ...]``
lists; there is no string form to parse.) Runs are derandomized, so a failure
reproduces; hypothesis prints the falsifying example.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from instit_edge.errors import InstitError  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=100, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text that looks like what users type around references, plus anything at all (lone surrogates included)
REF_ALPHABET = st.sampled_from(list("[]<>-0123456789 abAD\n:()|/") + ["<image>", "</s>", "<|im_end|>", "[1]", "<3>"])
ref_text = st.one_of(st.lists(REF_ALPHABET, max_size=40).map("".join), st.text(max_size=60))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                             st.dictionaries(st.text(max_size=12), c, max_size=4)),
                           max_leaves=12)


def _only_ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InstitError as e:
        assert e.message and "\n" not in e.message
        return e


# --------------------------------------------------------------------------- references
@SETTINGS
@given(ref_text)
def test_find_ids_and_timestamps_never_fail(text):
    from instit_edge.prompting import find_ids, find_timestamps

    ids = find_ids(text)
    assert all(isinstance(i, int) and i >= 0 for i in ids)
    for s, e in find_timestamps(text):
        assert isinstance(s, int) and isinstance(e, int)


@SETTINGS
@given(st.lists(st.integers(0, 10**6), max_size=6))
def test_ids_round_trip(ids):
    from instit_edge.prompting import find_ids, format_ids

    assert find_ids(format_ids(ids)) == ids


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999)), max_size=5), st.text(alphabet=" abc", max_size=5))
def test_timestamps_round_trip(pairs, sep):
    from instit_edge.prompting import find_timestamps

    text = sep.join(f"at <{s}>" if s == e else f"during <{s}>-<{e}>" for s, e in pairs)
    assert find_timestamps(text) == [(s, e) for s, e in pairs]


@SETTINGS
@given(ref_text, st.one_of(st.none(), st.lists(st.integers(0, 50), max_size=5)),
       st.one_of(st.none(), st.integers(0, 64)))
def test_validate_references_raises_only_instit_error(text, valid_ids, n_frames):
    from instit_edge.prompting import find_ids, find_timestamps, validate_references

    r = _only_ours(validate_references, text, valid_ids=valid_ids, n_frames=n_frames)
    if r is None:  # accepted: every reference is there
        if valid_ids is not None:
            assert set(find_ids(text)) <= set(valid_ids)
        for s, e in find_timestamps(text):
            assert 1 <= s <= e and (n_frames is None or e <= n_frames)


@SETTINGS
@given(st.text(max_size=40))
def test_check_text_accepts_exactly_utf8_encodable_text(text):
    from instit_edge.prompting import check_text

    try:
        text.encode("utf-8")
        ok = True
    except UnicodeEncodeError:
        ok = False
    r = _only_ours(check_text, text)
    assert (r == text) if ok else isinstance(r, InstitError)


# --------------------------------------------------------------------------- MC answers
@SETTINGS
@given(st.one_of(ref_text, st.text(alphabet="ABCDabcd ().:-*\n", max_size=20),
                 st.builds(lambda p, x: p + x, st.sampled_from(["The answer is ", "Answer: ", "Option ", "A ", ""]),
                           st.text(max_size=20))),
       st.sampled_from(["official", "strict"]))
def test_extract_mc_answer_gives_a_letter_or_nothing(response, mode):
    from instit_edge.prompting import extract_mc_answer

    assert extract_mc_answer(response, mode) in ("", "A", "B", "C", "D")


@FEW
@given(st.text(max_size=10).filter(lambda m: m not in ("official", "strict")))
def test_extract_mc_answer_unknown_mode(mode):
    from instit_edge.prompting import extract_mc_answer

    assert isinstance(_only_ours(extract_mc_answer, "A", mode), InstitError)


# --------------------------------------------------------------------------- bench readers
def _bench_row(draw_value):
    keys = ("question_id", "image_path", "video_path", "question", "answer", "options", "image_id", "category")
    return st.dictionaries(st.sampled_from(keys), draw_value, max_size=8)


good_rows = st.fixed_dictionaries({
    "question_id": st.one_of(st.text(max_size=6), st.integers(0, 99)),
    "image_path": st.sampled_from(["images_vpt/001.png", "../x.png", "/etc/hostname", "~/a.png", "", "images_vpt",
                                   "images_vpt/../images_vpt/001.png", "a\x00b", "\udcff.png"]),
    "question": st.one_of(ref_text, st.integers()),
    "answer": st.sampled_from(["A", "B", "Z", "", " C "]),
    "options": st.one_of(st.dictionaries(st.sampled_from("ABCDE"), st.one_of(ref_text, st.integers()), max_size=5),
                         json_values),
})


@FEW
@given(st.one_of(json_values, st.lists(st.one_of(good_rows, _bench_row(json_values)), max_size=4),
                 st.binary(max_size=60)),
       st.sampled_from(["image_multi_choices.json", "image_open_ended.json", "video_multi_choices.json"]))
def test_bench_json_reader_raises_only_instit_error(content, name):
    from PIL import Image

    from instit_edge.data.bench import load_bench

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "bench"
        (root / "images_vpt").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "images_vpt" / "001.png")
        raw = content if isinstance(content, bytes) else json.dumps(content).encode("utf-8", "surrogatepass")
        (root / name).write_bytes(raw)
        r = _only_ours(load_bench, root)
        if not isinstance(r, InstitError):
            assert r and all(it.question_id for it in r)
            for it in r:
                assert Path(it.image_path or it.video_path).resolve().is_relative_to(root.resolve())


parquet_rows = st.lists(st.fixed_dictionaries({
    "question_id": st.one_of(st.none(), st.text(max_size=5)),
    "question": st.one_of(st.none(), ref_text),
    "answer": st.one_of(st.none(), st.sampled_from(["A", "D", "x", ""])),
    "choice_a": st.one_of(st.none(), st.text(max_size=5)),
    "choice_b": st.one_of(st.none(), st.text(max_size=5)),
    "image": st.one_of(st.none(), st.fixed_dictionaries({
        "bytes": st.one_of(st.none(), st.binary(max_size=20)),
        "path": st.one_of(st.none(), st.sampled_from(["001.png", "../../etc/passwd", "/abs.png", ""]))})),
}), max_size=4)


@FEW
@given(parquet_rows)
def test_bench_parquet_reader_raises_only_instit_error(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from instit_edge.data.bench import load_bench

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "bench"
        folder = root / "image_multi_choice"
        folder.mkdir(parents=True)
        schema = pa.schema([("question_id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                            ("choice_a", pa.string()), ("choice_b", pa.string()),
                            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])
        cols = {f.name: [r[f.name] for r in rows] for f in schema}
        try:
            table = pa.table(cols, schema=schema)
        except (pa.ArrowException, UnicodeEncodeError):
            return  # pyarrow cannot even hold it (lone surrogates): nothing to read
        pq.write_table(table, folder / "test-00000-of-00001.parquet")
        _only_ours(load_bench, root)


@FEW
@given(st.binary(max_size=80))
def test_corrupt_parquet_is_one_error(data):
    from instit_edge.data.bench import load_bench

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "image_open_ended"
        folder.mkdir()
        (folder / "test-00000-of-00001.parquet").write_bytes(data)
        assert isinstance(_only_ours(load_bench, d), InstitError)


# --------------------------------------------------------------------------- predictions (score)
pred_rows = st.lists(st.one_of(
    st.fixed_dictionaries({"question_id": st.one_of(st.sampled_from(["1", "2"]), st.integers(1, 2), json_values),
                           "model_prediction": st.one_of(ref_text, st.integers()),
                           "ground_truth": st.one_of(st.sampled_from(["A", "B", "the cat"]), st.integers()),
                           "split": st.sampled_from(["image", "video", "audio"]),
                           "question": ref_text}),
    json_values), max_size=4)


@FEW
@given(st.one_of(pred_rows, json_values, st.binary(max_size=40)), st.sampled_from([".json", ".jsonl"]))
def test_prediction_files_raise_only_instit_error(content, suffix):
    from instit_edge.eval.judges import make_judge
    from instit_edge.eval.scoring import load_predictions_file, score_items, summarize

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"preds{suffix}"
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif suffix == ".jsonl" and isinstance(content, list):
            p.write_bytes(b"".join(json.dumps(r).encode("utf-8", "surrogatepass") + b"\n" for r in content))
        else:
            p.write_bytes(json.dumps(content).encode("utf-8", "surrogatepass"))
        recs = _only_ours(load_predictions_file, p)
        if not isinstance(recs, InstitError):
            assert recs
            items = _only_ours(score_items, recs, make_judge("offline"))
            if not isinstance(items, InstitError):
                summarize(items)


# --------------------------------------------------------------------------- bundle.json
MANIFEST = {
    "format_version": 1,
    "source": {"model": "m", "arch": "llava_next"},
    "architecture": {"arch": "llava_next", "llm": "llama", "text_hidden": 256, "context_length": 4096},
    "preprocess": {"image_size": 32, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3,
                   "pinpoints": [[32, 64], [64, 32], [64, 64]], "patch_size": 8, "feature_layer": -2,
                   "select_strategy": "default",
                   "video": {"anyres": False, "pool_stride": 2, "pool_mode": "average", "max_frames": 32}},
    "prompt": {"template": "vicuna_v1", "image_token": "<image>", "image_token_id": 4, "add_bos": True,
               "stop": ["</s>"], "max_new_tokens": 128},
    "files": {"llm": {"f16": {"path": "llm.f16.gguf", "size": 10, "sha256": "0" * 64}},
              "vision": {"fp32": {"path": "vision.onnx", "size": 10, "sha256": "0" * 64}}},
}


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(MANIFEST) if p]


@st.composite
def mutated_manifests(draw):
    m = copy.deepcopy(MANIFEST)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = m
        try:
            for k in path[:-1]:
                parent = parent[k]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    return m


@SETTINGS
@given(st.one_of(mutated_manifests(), json_values))
def test_bundle_manifest_raises_only_instit_error_and_what_loads_is_usable(manifest):
    from instit_edge.bundle import Bundle
    from instit_edge.runtime.anyres import Preprocess, select_best_resolution

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "bundle.json").write_bytes(json.dumps(manifest).encode("utf-8", "surrogatepass"))
        b = _only_ours(Bundle.load, root, verify=False)
        if isinstance(b, InstitError):
            return
        pre = Preprocess.from_dict(b.preprocess)  # what a session builds from it
        if pre.pinpoints:
            h, w = select_best_resolution((40, 70), pre.pinpoints)
            assert h % pre.image_size == 0 and w % pre.image_size == 0
        for group in b.manifest["files"]:
            for name in b.variants(group):
                assert b.path(group, name).resolve().is_relative_to(root.resolve())
        assert isinstance(b.prompt["add_bos"], bool) and isinstance(b.prompt["image_token"], str)
