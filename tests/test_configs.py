"""The shipped configs: every one parses, lists the callbacks it must, and the ImageNet ones train.

The ImageNet configs run for two epochs on the CPU with command-line overrides only (cpu, one
device, fp32, a small batch, an eighth of the width) on a tiny ImageNet-style folder and its
pack, at the configs' own 224 px and with their own callbacks: the check that a first ImageNet
run does not die at its first scheduled figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.imagenet_folder import make_folder
from zflight.callbacks import PAPER_EPOCHS, PAPER_LAYERS
from zflight.cli import main as _main
from zflight.data import pack as packmod

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

LR = "lightning.pytorch.callbacks.LearningRateMonitor"
EVOLUTION = "zflight.callbacks.FeatureEvolution"
PANELS = "zflight.callbacks.TopActivationPanels"
FILTERS = "zflight.callbacks.FilterGrid"
OCCLUSION = "zflight.callbacks.OcclusionFigures"
PAPER_FIGURES = [EVOLUTION, PANELS, FILTERS, OCCLUSION]

#: Every config in configs/ and the callbacks it must list, in order (a new config goes here too).
CALLBACKS = {
    "quickstart.yaml": PAPER_FIGURES,
    "zfnet_imagenet.yaml": [LR, *PAPER_FIGURES],
    "zfnet_imagenet_folder.yaml": [LR, *PAPER_FIGURES],
    "alexnet_imagenet.yaml": [LR, *PAPER_FIGURES],
}
IMAGENET = ["zfnet_imagenet.yaml", "zfnet_imagenet_folder.yaml", "alexnet_imagenet.yaml"]


def main(args: list[str]):
    # LightningCLI warns when it is given args while sys.argv holds pytest's own arguments.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["zflight"])
        return _main(args)


def _printed_config(name: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_config_is_listed_here():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(CALLBACKS)


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_config_parses_and_lists_its_callbacks(name, capsys):
    config = _printed_config(name, capsys)
    assert [c["class_path"] for c in config["trainer"]["callbacks"]] == CALLBACKS[name]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_config_schedules_the_papers_figures(name, capsys):
    callbacks = {c["class_path"]: c["init_args"] for c in _printed_config(name, capsys)["trainer"]["callbacks"]}
    evolution = callbacks[EVOLUTION]
    assert evolution["epochs"] == list(PAPER_EPOCHS) and evolution["final"] is True
    assert evolution["layers"] == list(PAPER_LAYERS)
    assert evolution["probe_size"] == 50_000  # the documented cost: docs/imagenet.md
    panels = callbacks[PANELS]
    assert panels["epochs"] is None and panels["split"] == "val" and panels["max_images"] is None
    assert panels["k"] == 9 and panels["layers"] == list(PAPER_LAYERS)
    assert callbacks[FILTERS]["layer"] == "conv1" and callbacks[FILTERS]["every_n_epochs"] == 1
    assert callbacks[OCCLUSION]["every_n_epochs"] == 10
    assert callbacks[OCCLUSION]["indices"] is None  # four classes, not the first class's four images
    # Sized for a 224 px network, not the quickstart's 64 px one (48 px tiles).
    assert evolution["tile"] >= 64 and panels["tile"] >= 64


# ------------------------------------------------------------------ two epochs of each on the CPU
@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> dict[str, Path]:
    """A tiny ImageNet-style folder (3 classes, 2 train and 2 val images each) and its 256 px pack."""
    src = make_folder(tmp_path_factory.mktemp("imagenet"), {"train": 2, "val": 2})
    dst = tmp_path_factory.mktemp("pack") / "zf"
    packmod.pack(src, dst, size=256, workers=0, chunk_size=8, progress=False)
    return {"folder": src, "pack": dst}


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_config_trains_two_epochs_on_the_cpu_with_its_figures(name, imagenet, tmp_path):
    root = imagenet["folder" if "folder" in name else "pack"]
    main([
        "fit", "--config", str(CONFIGS / name),
        f"--data.init_args.root={root}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
        "--trainer.precision=32-true", "--trainer.max_epochs=2",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--model.width=0.125",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])
    (run,) = (tmp_path / "runs").glob("*/version_0")
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    expected = {f"evolution/{layer}" for layer in PAPER_LAYERS} | {f"top9/{layer}" for layer in PAPER_LAYERS}
    assert expected | {"filters/conv1"} <= images
    assert len(events.Images("evolution/conv5")) == 2  # epochs 1 and 2, the paper's first two
    assert len(events.Images("filters/conv1")) == 3  # before training and after each epoch
    assert (run / "figures" / "top9_conv5_epoch002.png").is_file()
