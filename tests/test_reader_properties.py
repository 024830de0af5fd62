"""Property-based tests of the four readers (COCO, YOLO, VOC, class folders).

Random, truncated and mutated annotation files must end in one of three ways: a clean import,
quarantine rows that say what is wrong, or a ``UserError`` of one sentence. Any other
exception is a bug. Examples are bounded and derandomised (same cases on every run, no
example database), so the whole module runs in well under a minute; the number of cases run
per reader is printed at the end of the module.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stages.ingest
from stages.core.errors import UserError
from tests.conftest import (
    DETECT_CLASSES,
    DETECT_SPEC,
    detect_params,
    fast_params,
    voc_xml,
    write_coco,
    write_image,
    write_voc,
    write_yolo,
    yolo_row,
)

CASES: Counter[str] = Counter()
PROFILE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest):
    yield
    total = sum(CASES.values())
    line = f"reader property cases run: {total} ({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))})"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)  # shown even under -q, so CI logs carry the count
    else:
        print(line)


def _outcome(run) -> str:
    """Run an import; the only acceptable endings are a result or a one-sentence UserError."""
    try:
        result = run()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return "refused"
    for row in result.quarantine.itertuples():
        assert row.reason and row.detail, row  # every dropped item says why
    return "quarantined" if len(result.quarantine) else "imported"


# --- mutations of a valid file's bytes --------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` truncated, with bytes replaced, inserted or deleted (a few edits)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def replaced_somewhere(draw: st.DrawFn, doc: object) -> object:
    """``doc`` with one value, somewhere down its tree, replaced by random JSON (or removed)."""
    doc = json.loads(json.dumps(doc))
    node = doc
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return doc
        key = draw(st.sampled_from(keys))
        child = node[key]  # type: ignore[index]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
            del node[key]
        else:
            node[key] = draw(JSON_VALUE)  # type: ignore[index]
        return doc


# --- fixtures: one source per reader, the annotation file rewritten per example ----------------


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco")
    doc = write_coco(root / "source")
    return root, doc


@pytest.fixture(scope="module")
def yolo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("yolo")
    write_yolo(root / "source")
    return root


@pytest.fixture(scope="module")
def voc_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    write_voc(root / "source")
    return root


# --- COCO ---------------------------------------------------------------------------------------


def _coco_run(root: Path, content: bytes) -> str:
    (root / "source" / "annotations.json").write_bytes(content)
    CASES["coco"] += 1
    return _outcome(lambda: stages.ingest.run(detect_params(root, root / "source", data={"format": "coco"})))


@PROFILE
@given(data=st.data())
def test_coco_mutated_bytes(coco_source: tuple[Path, dict], data: st.DataObject) -> None:
    root, doc = coco_source
    _coco_run(root, data.draw(mutated(json.dumps(doc).encode("utf-8"))))


@PROFILE
@given(data=st.data())
def test_coco_mutated_structure(coco_source: tuple[Path, dict], data: st.DataObject) -> None:
    root, doc = coco_source
    changed = data.draw(replaced_somewhere(doc))
    _coco_run(root, json.dumps(changed, allow_nan=True).encode("utf-8"))


@PROFILE
@given(value=JSON_VALUE)
def test_coco_random_json(coco_source: tuple[Path, dict], value: object) -> None:
    root, _ = coco_source
    _coco_run(root, json.dumps({"images": value, "annotations": value, "categories": value}).encode("utf-8"))


# --- YOLO ---------------------------------------------------------------------------------------

YOLO_TOKEN = st.sampled_from(["0", "1", "2", "-1", "0.5", "1.5", "nan", "inf", "1e309", "x", "", "0.0"])
YOLO_ROW = st.lists(YOLO_TOKEN | st.text(max_size=6), max_size=7).map(" ".join)


def _valid_labels() -> bytes:
    _, size, boxes = DETECT_SPEC[0]
    rows = [yolo_row(DETECT_CLASSES.index(c), (x0, y0, x1, y1), size) for c, x0, y0, x1, y1 in boxes]
    return ("\n".join(rows) + "\n").encode()


@PROFILE
@given(data=st.data())
def test_yolo_labels_random_and_mutated(yolo_source: Path, data: st.DataObject) -> None:
    label = yolo_source / "source" / "labels" / "a.txt"
    if data.draw(st.booleans()):
        content = data.draw(mutated(_valid_labels()))
    else:
        content = "\n".join(data.draw(st.lists(YOLO_ROW, max_size=6))).encode("utf-8", "surrogatepass")
    label.write_bytes(content)
    CASES["yolo"] += 1
    _outcome(lambda: stages.ingest.run(detect_params(yolo_source, yolo_source / "source")))


@PROFILE
@given(data=st.data())
def test_yolo_dataset_yaml_random_and_mutated(yolo_source: Path, data: st.DataObject) -> None:
    original = yaml.safe_dump({"names": DETECT_CLASSES, "nc": len(DETECT_CLASSES)}).encode()
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        content = data.draw(mutated(original))
    elif choice == 1:
        names = data.draw(
            JSON_VALUE | st.dictionaries(st.text(max_size=3) | st.integers(-2, 4), st.text(max_size=5))
        )
        content = yaml.safe_dump({"names": names, "nc": data.draw(JSON_LEAF)}).encode()
    else:
        content = data.draw(st.binary(max_size=80))
    yaml_file = yolo_source / "source" / "data.yaml"
    try:
        yaml_file.write_bytes(content)
        CASES["yolo"] += 1
        _outcome(lambda: stages.ingest.run(detect_params(yolo_source, yolo_source / "source")))
    finally:
        yaml_file.write_bytes(original)


# --- VOC ----------------------------------------------------------------------------------------

XML_TEXT = st.text(max_size=10) | st.sampled_from(
    ["", "nan", "-5", "1e400", "10", "3.5", "a.png", "../x.png"]
)


@st.composite
def voc_document(draw: st.DrawFn) -> bytes:
    """A structurally random VOC annotation: random names, sizes, corners and flags."""
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        corners = "".join(
            f"<{c}>{draw(XML_TEXT)}</{c}>" for c in draw(st.permutations(["xmin", "ymin", "xmax", "ymax"]))
        )
        bndbox = f"<bndbox>{corners}</bndbox>" if draw(st.booleans()) else ""
        objects.append(
            f"<object><name>{draw(XML_TEXT)}</name><difficult>{draw(XML_TEXT)}</difficult>{bndbox}</object>"
        )
    filename = draw(st.sampled_from(["a.png", "a", "", "missing.png", "/etc/passwd", "x" * 300]) | XML_TEXT)
    from xml.sax.saxutils import escape

    body = (
        f"<annotation><filename>{escape(filename)}</filename>"
        f"<size><width>{escape(draw(XML_TEXT))}</width><height>{escape(draw(XML_TEXT))}</height></size>"
        + "".join(objects).replace("&", "&amp;")
        + "</annotation>"
    )
    encoding = draw(st.sampled_from(["", "utf-8", "latin-1", "bogus", "utf-16"]))
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>' if encoding else ""
    return (declaration + body).encode("utf-8", "surrogatepass")


@PROFILE
@given(data=st.data())
def test_voc_random_and_mutated(voc_source: Path, data: st.DataObject) -> None:
    xml = voc_source / "source" / "Annotations" / "a.xml"
    original = voc_xml(*DETECT_SPEC[0][:2], DETECT_SPEC[0][2]).encode()
    content = data.draw(mutated(original) | voc_document() | st.binary(max_size=60))
    try:
        xml.write_bytes(content)
        CASES["voc"] += 1
        _outcome(lambda: stages.ingest.run(detect_params(voc_source, voc_source / "source")))
    finally:
        xml.write_bytes(original)


# --- class folders ------------------------------------------------------------------------------

NAME = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"), min_size=1, max_size=40
).filter(lambda n: n not in {".", ".."} and len(n.encode()) < 200)
CONTENT = st.sampled_from(["png", "truncated", "random", "empty", "jpeg_named_png"])


@PROFILE
@given(
    files=st.lists(
        st.tuples(NAME, NAME, st.sampled_from([".png", ".jpg", ".txt", ".PNG", ""]), CONTENT),
        min_size=1,
        max_size=6,
    ),
    noise=st.binary(max_size=64),
)
def test_class_folders_random(
    tmp_path_factory: pytest.TempPathFactory, files: list[tuple[str, str, str, str]], noise: bytes
) -> None:
    root = tmp_path_factory.mktemp("folder", numbered=True)
    source = root / "source"
    for index, (label, stem, extension, kind) in enumerate(files):
        path = source / label / f"{stem}{extension}"
        if kind in {"png", "truncated", "jpeg_named_png"}:
            write_image(path, seed=index, size=(24, 20), fmt="JPEG" if kind == "jpeg_named_png" else "PNG")
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(noise if kind == "random" else b"")
    CASES["folder"] += 1
    try:
        _outcome(lambda: stages.ingest.run(fast_params(root, source, data={"format": "folder"})))
    finally:
        shutil.rmtree(root, ignore_errors=True)
