"""The docs cannot drift from the code: docs/PARAMETERS.md is exactly what the settings models generate."""

from __future__ import annotations

import re
from pathlib import Path

from dlpixel import docs_gen
from dlpixel.config import InferenceConfig, TrainingConfig
from dlpixel.inference.outputs import measurement_names
from pydantic import BaseModel

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for key, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _keys(sub, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


TRAINING_KEYS = _keys(TrainingConfig)
INFERENCE_KEYS = _keys(InferenceConfig)


def test_parameters_md_is_generated_from_the_settings() -> None:
    expected = docs_gen.parameters_markdown()
    actual = (DOCS / "PARAMETERS.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/PARAMETERS.md is stale: run `python -m dlpixel.docs_gen > docs/PARAMETERS.md`"


def test_every_setting_appears_once_with_its_default_and_a_description() -> None:
    text = docs_gen.parameters_markdown()
    training, inference = text.split("\n## Inference\n")
    for part, model, keys in ((training, TrainingConfig, TRAINING_KEYS), (inference, InferenceConfig, INFERENCE_KEYS)):
        defaults = model()
        for key in keys:
            rows = [line for line in part.splitlines() if line.startswith(f"| `{key}` |")]
            assert len(rows) == 1, f"{key}: {len(rows)} rows"
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]
            value = defaults
            for name in key.split("."):
                value = getattr(value, name)
            assert cells[1] == docs_gen._show(value)
            assert cells[3], f"{key} has no description (add a docstring in config/__init__.py)"


def test_hand_written_entries_name_real_settings() -> None:
    known = set(TRAINING_KEYS) | {f"inference.{k}" for k in INFERENCE_KEYS}
    for table in (docs_gen.MEANING, docs_gen.GUIDANCE, docs_gen.RANGES):
        assert set(table) <= known, sorted(set(table) - known)
    assert set(docs_gen.GUIDANCE) == known, sorted(known - set(docs_gen.GUIDANCE))


def test_inference_md_uses_the_measurement_names_apply_writes() -> None:
    text = (DOCS / "INFERENCE.md").read_text(encoding="utf-8")
    for name in measurement_names(["Tumor", "Stroma", "Ignore*"], calibrated=True, classifier="tumour_stroma"):
        assert name in text, name


def test_readme_cpu_install_takes_the_pinned_torch_from_the_cpu_index() -> None:
    """The CPU-only command installs exactly the torch and torchvision that constraints.txt pins, from PyTorch's CPU
    wheel index; the default command (which pulls the CUDA build on Linux) stays the README's command 1."""
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (DOCS.parent / "constraints.txt").read_text(), re.M))
    assert set(pins) == {"torch", "torchvision"}
    cpu = [line for line in readme.splitlines() if "--index-url https://download.pytorch.org/whl/cpu" in line]
    assert len(cpu) == 1
    assert f"torch=={pins['torch']}" in cpu[0].split() and f"torchvision=={pins['torchvision']}" in cpu[0].split()
    assert readme.count('pip install -c constraints.txt -e ".[test]"') >= 2
