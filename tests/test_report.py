"""The training report, its diagnosis, `models show` and `--events jsonl`, checked against a real (tiny) run."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import strokes_from_truth, synthetic_image, write_folder_project
from dlpixel.classifiers import store
from dlpixel.classifiers.metadata import ClassifierMetadata, ClassInfo, Results
from dlpixel.cli.main import main
from dlpixel.config import NormalizationConfig, TrainingConfig
from dlpixel.data.preprocessing import Preprocessing
from dlpixel.report.page import ReportSample, diagnose, pick_sample_tiles, write_report
from PIL import Image

TINY = {"method": "unet",
        "backbone": "efficientnet-lite0", "tile_size": 64, "tile_overlap": 0, "epochs": 3, "early_stop_patience": 0,
        "batch_size": 4, "learning_rate": 0.003, "line_stroke_width": 3}
CHROMIUM = Path("/usr/bin/chromium")
EPOCH_FIELDS = {"epoch", "epochs", "train_loss", "val_loss", "mean_iou", "per_class_iou", "pixel_accuracy",
                "learning_rate", "best_epoch", "best_metric", "epochs_without_improvement", "patience", "seconds"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny classifier trained through the CLI with ``--events jsonl``; its folder, stdout and files."""
    img, truth = synthetic_image()
    folder = write_folder_project(tmp_path_factory.mktemp("report") / "project",
                                  {"synthetic.tif": (img, strokes_from_truth(truth))})
    sets = [f"{k}={v}" for k, v in TINY.items()]
    out = io.StringIO()
    previous = signal.getsignal(signal.SIGINT)
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["train", "--project", str(folder), "--name", "tiny", "--events", "jsonl",
                       *[a for s in sets for a in ("--set", s)]])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 0
    path = store.classifier_dir(folder, "tiny")
    return {"project": folder, "path": path, "stdout": out.getvalue(),
            "meta": ClassifierMetadata.read(path / store.METADATA),
            "history": json.loads((path / store.HISTORY).read_text()),
            "html": (path / store.REPORT).read_text(encoding="utf-8")}


class Page(HTMLParser):
    """Tables (by id: rows of ``data-value``s), images (by id or class), attributes of <body>, the embedded JSON."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[Any]]] = {}
        self.images: list[dict[str, str]] = []
        self.data: Any = None
        self.ids: set[str] = set()
        self._table: str | None = None
        self._script: str | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._table is not None and "data-value" in a:
            self.tables[self._table][-1].append(json.loads(a["data-value"]))
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self._script = a.get("id")
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "script":
            if self._script == "report-data":
                self.data = json.loads("".join(self._text))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._text.append(data)


def decode(uri: str) -> tuple[str, bytes]:
    head, payload = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    return head[len("data:"):-len(";base64")], base64.b64decode(payload)


def series_of(svg: bytes) -> dict[str, list[float | None]]:
    root = ET.fromstring(svg)
    return {g.get("data-label"): json.loads(g.get("data-values")) for g in root.iter("{http://www.w3.org/2000/svg}g")
            if g.get("class") == "series"}


def test_events_jsonl_is_one_json_object_per_line_with_the_epoch_fields(trained):
    events = [json.loads(line) for line in trained["stdout"].splitlines() if line.strip()]
    assert all(isinstance(e, dict) and "event" in e for e in events)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e, row in zip(epochs, trained["history"]):
        assert EPOCH_FIELDS <= set(e)
        assert e["train_loss"] == row["train_loss"] and e["mean_iou"] == row["mean_iou"]
    assert {e["event"] for e in events} >= {"stage", "extract", "epoch", "done"}
    assert "batch" not in {e["event"] for e in events}
    assert events[-1]["event"] == "done"


def test_report_holds_every_plot_and_table_built_from_the_real_history(trained):
    meta, history = trained["meta"], trained["history"]
    page = Page(trained["html"])
    r = meta.results
    names = meta.class_names

    assert page.data["history"] == history
    assert page.data["metadata"] == json.loads((trained["path"] / store.METADATA).read_text())

    charts = {i["id"]: series_of(decode(i["src"])[1]) for i in page.images if i.get("id", "").endswith("-chart")}
    assert set(charts) == {"loss-chart", "iou-chart", "lr-chart"}
    assert charts["loss-chart"]["training loss"] == [row["train_loss"] for row in history]
    assert charts["loss-chart"]["validation loss"] == [row["val_loss"] for row in history]
    assert charts["iou-chart"]["mean IoU"] == [row["mean_iou"] for row in history]
    for k, name in enumerate(names):
        assert charts["iou-chart"][name] == [row["per_class_iou"][k] for row in history]
    assert charts["lr-chart"]["learning rate"] == [row["learning_rate"] for row in history]
    for chart in ("loss-chart", "iou-chart", "lr-chart"):
        svg = ET.fromstring(decode(next(i["src"] for i in page.images if i.get("id") == chart))[1])
        markers = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "marker"]
        assert [float(g.get("data-x")) for g in markers] == [r.best_epoch]

    counts = [row[:-1] for row in page.tables["confusion-counts"][1:]]
    assert counts == r.confusion
    for row, shares in zip(r.confusion, page.tables["confusion-normalised"][1:]):
        assert shares[-1] == sum(row)
        assert shares[:-1] == pytest.approx([v / sum(row) for v in row])
    assert [row[0] for row in page.tables["per-class"][1:]] == [r.per_class_iou[n] for n in names]
    assert [row for row in page.tables["labelled-pixels"][1:]] == [
        [meta.labelled_pixels["train"][n], meta.labelled_pixels["val"][n]] for n in names]
    assert [row[0] for row in page.tables["class-weights"][1:]] == [meta.class_weights[n] for n in names]
    changed = {tuple(row) for row in page.tables["settings-changed"][1:]}
    assert (3, 50) in changed and (64, 512) in changed and ("efficientnet-lite0", "resnet34") in changed

    tiles = [i for i in page.images if "tile" in i.get("class", "")]
    assert len(tiles) == 3 * min(6, meta.split["val_tiles"])
    assert {"diagnosis", "summary", "samples"} <= page.ids


def test_every_inline_image_decodes(trained):
    page = Page(trained["html"])
    assert len(page.images) >= 6
    for img in page.images:
        kind, raw = decode(img["src"])
        if kind == "image/svg+xml":
            root = ET.fromstring(raw)
            assert root.tag == "{http://www.w3.org/2000/svg}svg" and int(root.get("width")) > 0
        else:
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
                assert im.width > 0 and im.height > 0
                if "labels" in img.get("class", ""):
                    alpha = np.asarray(im.convert("RGBA"))[..., 3]
                    assert (alpha == 0).any() and (alpha == 255).any()


def test_models_show_prints_a_summary_json_and_opens_the_report(trained, capsys, monkeypatch):
    project, meta = str(trained["project"]), trained["meta"]
    assert main(["models", "show", "tiny", "--project", project]) == 0
    text = capsys.readouterr().out
    assert "epochs = 3  (default 50)" in text and "tile_size = 64  (default 512)" in text
    for name in meta.class_names:
        iou = meta.results.per_class_iou[name]
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
        assert f"{iou:.3f}" in line and f"{meta.labelled_pixels['train'][name]:,}" in line
    assert f"best epoch {meta.results.best_epoch} of 3" in text
    assert str(trained["path"] / store.REPORT) in text

    assert main(["models", "show", "tiny", "--project", project, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((trained["path"] / store.METADATA).read_text())

    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["models", "show", "tiny", "--project", project, "--open"]) == 0
    assert opened == [(trained["path"] / store.REPORT).as_uri()]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_no_broken_image(trained, tmp_path):
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"]
    url = (trained["path"] / store.REPORT).as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=False).stdout
    body = next(t for t in dom.split("<") if t.startswith("body"))
    n_images = len(Page(trained["html"]).images)
    assert f'data-images="{n_images}"' in body and 'data-broken-images="0"' in body, body

    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def _meta(per_class_iou: dict[str, float | None], confusion: list[list[int]]) -> ClassifierMetadata:
    names = list(per_class_iou)
    return ClassifierMetadata(
        name="m", input_channels=["Red", "Green", "Blue"], tile_size=64, downsample=1.0,
        classes=[ClassInfo(index=i, name=n, color=(200, 10 * i, 0)) for i, n in enumerate(names)],
        preprocessing=Preprocessing(channels=[0, 1, 2], channel_names=["Red", "Green", "Blue"],
                                    normalization=NormalizationConfig()),
        training=TrainingConfig(backbone="resnet50", epochs=20),
        labelled_pixels={"train": {n: 1000 for n in names}, "val": {n: 200 for n in names}},
        class_weights={n: 1.0 for n in names},
        results=Results(best_epoch=8, epochs_run=20, stopped_early=False, mean_iou=0.85,
                        per_class_iou=per_class_iou, pixel_accuracy=0.9, train_loss=0.2, val_loss=0.3,
                        confusion=confusion),
    )


def _history(train: list[float], val: list[float], iou: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": t, "val_loss": v, "mean_iou": m, "per_class_iou": [m, m],
             "learning_rate": 1e-3, "best_epoch": 1, "epochs_without_improvement": 0, "seconds": e}
            for e, (t, v, m) in enumerate(zip(train, val, iou), 1)]


GOOD = _meta({"Tumor": 0.9, "Stroma": 0.85}, [[180, 20], [15, 185]])
EPOCHS = np.arange(20)
HEALTHY = _history(list(1.2 * np.exp(-EPOCHS / 5) + 0.15), list(1.3 * np.exp(-EPOCHS / 5) + 0.22),
                   list(0.9 - 0.6 * np.exp(-EPOCHS / 4)))


def test_healthy_history_has_no_findings_and_the_report_says_so(tmp_path):
    assert diagnose(HEALTHY, GOOD) == []
    jitter = 1 + 0.04 * np.random.default_rng(3).standard_normal(20)
    bumpy = [row["val_loss"] * j + (0.5 if row["epoch"] == 3 else 0) for row, j in zip(HEALTHY, jitter)]
    assert diagnose(_history([r["train_loss"] for r in HEALTHY], bumpy, [r["mean_iou"] for r in HEALTHY]), GOOD) == []
    write_report(tmp_path, GOOD, HEALTHY, [])
    assert 'id="no-findings"' in (tmp_path / store.REPORT).read_text()


def test_validation_loss_rising_while_training_loss_falls_is_overfitting(tmp_path):
    train = list(1.0 - 0.045 * EPOCHS)
    val = [1.0 - 0.07 * e if e <= 7 else 0.51 + 0.04 * (e - 7) for e in EPOCHS]
    history = _history(train, val, [0.8] * 20)
    findings = diagnose(history, GOOD)
    assert [f.kind for f in findings] == ["overfitting"]
    assert "epoch 8" in findings[0].evidence and any("freeze" in a for a in findings[0].advice)
    write_report(tmp_path, GOOD, history, [])
    assert 'data-kind="overfitting"' in (tmp_path / store.REPORT).read_text()


def test_other_patterns_each_have_their_own_finding():
    wild = [0.5 + (0.3 if e % 2 else 0) for e in EPOCHS]
    assert [f.kind for f in diagnose(_history(wild, wild, [0.8] * 20), GOOD)] == ["oscillation"]
    flat = [1.0 - 0.002 * e for e in EPOCHS]
    assert [f.kind for f in diagnose(_history(flat, flat, [0.3] * 20), GOOD)] == ["slow_learning"]
    early = [0.6 + 0.4 * np.exp(-e) for e in EPOCHS]
    assert [f.kind for f in diagnose(_history(early, early, [0.45] * 20), GOOD)] == ["underfitting"]
    weak = _meta({"Tumor": 0.9, "Stroma": 0.3, "Necrosis": None}, [[180, 20, 0], [140, 60, 0], [0, 0, 0]])
    findings = diagnose(HEALTHY, weak)
    assert [(f.kind, f.title) for f in findings] == [("weak_class", "'Stroma' is recognised poorly"),
                                                      ("no_validation", "'Necrosis' has no validation pixels")]
    assert "70% of its validation pixels were predicted as 'Tumor'" in findings[0].evidence


def test_sample_tiles_cover_every_class_before_the_most_labelled():
    masks = np.full((4, 8, 8), 255, np.uint8)
    masks[0, :6] = 0
    masks[1, :2] = 1
    masks[2, :1] = 2
    masks[2, 1:2] = 0
    masks[3, :7] = 0
    assert pick_sample_tiles(masks, [0, 1, 2, 3], 3, count=3) == [2, 1, 3]


def test_samples_show_unlabelled_pixels_transparent(tmp_path):
    labels = np.full((40, 40), 255, np.uint8)
    labels[:10] = 1
    sample = ReportSample(np.random.default_rng(0).random((40, 40, 1), np.float32), labels,
                          np.ones((40, 40), np.uint8))
    page = Page(write_report(tmp_path, GOOD, HEALTHY, [sample]).read_text())
    tile = {i["class"].split()[1]: i["src"] for i in page.images if "tile" in i.get("class", "")}
    with Image.open(io.BytesIO(decode(tile["labels"])[1])) as im:
        rgba = np.asarray(im.convert("RGBA"))
    assert (rgba[:10, :, 3] == 255).all() and (rgba[10:, :, 3] == 0).all()
    assert (rgba[:10, :, :3] == (200, 10, 0)).all()
    with Image.open(io.BytesIO(decode(tile["image"])[1])) as im:
        assert im.mode == "L" and im.size == (40, 40)


def test_advice_with_a_class_name_with_spaces_is_quoted_for_a_shell_and_parses_back():
    import shlex

    from dlpixel.cli.main import build_parser, training_settings

    weak = _meta({"Tumor": 0.9, "Optic disc": 0.3}, [[180, 20], [140, 60]])
    finding = next(f for f in diagnose(HEALTHY, weak) if f.kind == "weak_class")
    advice = finding.advice[0]
    assert "--set 'class_weights.Optic disc=2'" in advice
    words = shlex.split(advice.split(": ", 1)[1].split(" (now")[0])
    args = build_parser().parse_args(["train", *words])
    cfg, _ = training_settings(args)
    assert cfg.class_weights == {"Optic disc": 2.0}


def test_axis_titles_stand_clear_of_the_tick_labels():
    """The y-axis title is drawn rotated left of the tick labels: measured in DejaVu Sans (the sans-serif that
    renders the report here), no tick label of the learning-rate chart reaches it."""
    import xml.etree.ElementTree as ET

    from dlpixel.report.plots import Series, line_chart
    from PIL import ImageFont

    font_file = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not font_file.exists():
        pytest.skip("DejaVu Sans is not installed (Debian: fonts-dejavu-core)")
    font = ImageFont.truetype(str(font_file), 12)
    _, descent = font.getmetrics()
    for values in ([5e-4, 4e-4, 2e-4, 1e-5], [0.9, 0.5, 0.1], [1234.0, 20.0]):
        svg = ET.fromstring(line_chart([Series("learning rate", values, "#2ca02c")], "Learning rate", "learning rate"))
        texts = [t for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        title = next(t for t in texts if "rotate(-90)" in t.get("transform", ""))
        title_x = float(title.get("transform").split("(")[1].split(",")[0])
        ticks = [t for t in texts if t.get("text-anchor") == "end" and t.get("x") is not None]
        assert ticks
        leftmost = min(float(t.get("x")) - font.getlength(t.text) for t in ticks)
        assert leftmost > title_x + descent, (values, leftmost, title_x + descent)


def test_the_run_table_has_no_empty_header_row(tmp_path):
    meta = _meta({"Tumor": 0.9, "Stroma": 0.85}, [[180, 20], [15, 185]])
    text = write_report(tmp_path, meta, HEALTHY, []).read_text()
    page = Page(text)
    run = text[text.index('<table id="run">'): text.index("</table>", text.index('<table id="run">'))]
    assert "<thead>" not in run and "<th></th>" not in run and run.count("<tr>") == len(page.tables["run"])
