"""Training with torch DDP: the pieces (shards, launcher arguments, nothing changed in one process) and a real
two-process run on CPUs (gloo) through ``dlpixel train --gpus 2``, where rank 0 alone saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from dlpixel.training import distributed

SETTINGS = ["tile_size=64", "tile_overlap=0", "epochs=2", "early_stop_patience=0", "batch_size=4",
            "backbone=resnet18", "pretrained=false", "freeze=none", "num_workers=0", "line_stroke_width=3",
            "device=cpu", "precision=fp32"]


def test_one_process_trains_as_before(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    model = torch.nn.Conv2d(3, 2, 1)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.train_sampler(list(range(10)), 0) is None
    assert distributed.device_for(torch.device("cpu")) == torch.device("cpu")
    assert distributed.is_main()


def test_each_process_gets_its_own_shard_of_every_epoch(monkeypatch):
    data = list(range(23))
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = {}
    for epoch in (1, 2):
        for r in (0, 1):
            monkeypatch.setenv("RANK", str(r))
            sampler = distributed.train_sampler(data, seed=7)
            sampler.set_epoch(epoch)
            shards[epoch, r] = list(sampler)
        # Disjoint halves that together cover every tile (one repeated to even out 23 tiles over 2 processes).
        both = shards[epoch, 0] + shards[epoch, 1]
        assert len(shards[epoch, 0]) == len(shards[epoch, 1]) == 12
        assert set(both) == set(data) and len(both) - len(set(both)) == 1
    assert shards[1, 0] != shards[2, 0]  # reshuffled each epoch
    assert not distributed.is_main()


def test_launcher_arguments():
    assert distributed.without_gpus_flag(["train", "--gpus", "2", "--name", "x", "--gpus=3", "--quiet"]) == [
        "train", "--name", "x", "--quiet"]


def test_two_processes_train_and_rank_0_alone_saves(synthetic_project):
    folder, _, _ = synthetic_project
    cmd = [sys.executable, "-m", "dlpixel", "train", "--gpus", "2", "--project", str(folder), "--name", "ddp",
           "--quiet"]
    for s in SETTINGS:
        cmd += ["--set", s]
    # The CPU (gloo) world on any machine: a one-GPU machine has no second GPU to give rank 1.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    folders = sorted(p.name for p in (folder / "classifiers" / "dl").iterdir() if p.is_dir())
    assert folders == ["ddp"]  # one classifier, no staging folder left by the other process
    meta = json.loads((folder / "classifiers" / "dl" / "ddp" / "metadata.json").read_text())
    assert meta["training"]["batch_size"] == 4 and meta["training"]["backbone"] == "resnet18"
    # Left at auto, the method is the same in every process: several GPUs train a U-Net, whatever the labels.
    assert meta["training"]["method"] == "unet" and meta["architecture"] == "unet"
    assert meta["method_choice"] == {"setting": "auto", "method": "unet",
                                     "reason": "training on several GPUs trains a U-Net"}
    history = json.loads((folder / "classifiers" / "dl" / "ddp" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert run.stdout.count("classifier 'ddp' saved") == 1


def test_gpus_refuses_a_method_that_trains_in_one_process(synthetic_project, capsys):
    from dlpixel.cli.main import main

    folder, _, _ = synthetic_project
    assert main(["train", "--gpus", "2", "--project", str(folder), "--name", "f", "--set", "method=features"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "method 'features'" in err
    assert not (folder / "classifiers").exists()
