import json

import pytest
import torch

from zflight.cli.compare import main as compare_main
from zflight.module import ImageClassifier


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for arch in ("alexnet_zf", "zfnet"):
        torch.manual_seed(0)
        module = ImageClassifier(arch=arch, num_classes=10, width=0.125, image_size=64, init="kaiming")
        path = folder / f"{arch}.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "datamodule_hyper_parameters": {"image_size": 64, "val_size": 16, "seed": 0}}, path)
        paths.append(path)
    return paths


def test_compare_cli_writes_figures_and_json(ckpts, tmp_path):
    out = tmp_path / "cmp"
    compare_main(["--ckpt_path", str(ckpts[0]), "--ckpt_path_b", str(ckpts[1]), "--out", str(out),
                  "--num_images", "8", "--maps", "4", "--max_shift", "2"])
    for name in ("compare.png", "filters_a.png", "filters_b.png", "compare.json"):
        assert (out / name).stat().st_size > 100
    data = json.loads((out / "compare.json").read_text())
    assert list(data["models"]) == ["alexnet_zf", "zfnet"]
    assert data["models"]["alexnet_zf"]["stride"] == 4 and data["models"]["zfnet"]["stride"] == 2


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--ckpt_path_b", "missing.ckpt"], "--ckpt_path_b"),
        (["--feature_layer", "relu9"], "relu9"),
        (["--maps", "0"], "--maps"),
    ],
)
def test_compare_cli_bad_input_one_message_no_output(ckpts, tmp_path, capsys, extra, words):
    args = ["--ckpt_path", str(ckpts[0]), "--ckpt_path_b", str(ckpts[1]), "--out", str(tmp_path / "c"),
            "--num_images", "4", "--maps", "2", *extra]
    with pytest.raises(SystemExit) as exc:
        compare_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert list(tmp_path.iterdir()) == []


def test_compare_cli_writes_figures_and_json_from_image_files(write_pngs, ckpts, tmp_path):
    files = write_pngs(tmp_path, (200, 30, 30), (30, 30, 200), (30, 200, 30))
    out = tmp_path / "cmp"
    compare_main(["--ckpt_path", str(ckpts[0]), "--ckpt_path_b", str(ckpts[1]), "--out", str(out),
                  "--images", *files, "--maps", "2", "--max_shift", "2"])
    for name in ("compare.png", "filters_a.png", "filters_b.png", "compare.json"):
        assert (out / name).stat().st_size > 100
    data = json.loads((out / "compare.json").read_text())
    assert data["images"] == files and "split" not in data
    for model in data["models"].values():
        assert model["num_probe_images"] == 3
        assert all(0 <= i < 3 for i in model["projected_from_images"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "img0.png", "img1.png", "img2.png"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--images", "{missing}"], "--images: no such file: {missing}"),
        (["--images", "{good}", "{bad}"], "--images: cannot read image file {bad}"),
        (["--images", "{good}", "--num_images", "4"], "--num_images goes with data set images"),
    ],
)
def test_compare_cli_bad_image_files_one_message_no_output(write_pngs, ckpts, tmp_path, capsys, extra, words):
    (good,) = write_pngs(tmp_path, (10, 200, 10))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    names = {"missing": str(tmp_path / "missing.png"), "bad": str(bad), "good": good}
    with pytest.raises(SystemExit) as exc:
        compare_main(["--ckpt_path", str(ckpts[0]), "--ckpt_path_b", str(ckpts[1]), "--out",
                      str(tmp_path / "c"), "--maps", "2", *[a.format(**names) for a in extra]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words.format(**names) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "img0.png"]


# ----------------------------------------------------------------- any model, any images
def _any_options(resnet18_file):
    """A: resnet18 (10 classes) from the state_dict of tests/conftest.py; B: a random resnet18; at 48 px."""
    return ["--model", "resnet18", "--model_args", '{"num_classes": 10}', "--checkpoint", str(resnet18_file),
            "--resize", "50", "--image_size", "48", "--model_b", "resnet18", "--model_args_b", '{"num_classes": 10}']


def test_any_models_on_a_folder_first_conv_and_default_layers_or_named_ones(resnet18_file, photo_folders, tmp_path,
                                                                             capsys):
    out = tmp_path / "cmp"
    compare_main([*_any_options(resnet18_file), "--images", str(photo_folders[0]), "--out", str(out),
                  "--maps", "2", "--max_shift", "1", "--num_images", "3", "--feature_layer", "layer1", "layer2"])
    for name in ("compare.png", "filters_a.png", "filters_b.png", "compare.json"):
        assert (out / name).stat().st_size > 100
    data = json.loads((out / "compare.json").read_text())
    assert list(data["models"]) == ["resnet18 (a)", "resnet18 (b)"]
    a, b = data["models"].values()
    # The first Conv2d's filters, activity at the first default layer, features as named per model.
    assert a["layers"] == {"filter_layer": "conv1", "activity_layer": "relu", "feature_layer": "layer1"}
    assert b["layers"]["feature_layer"] == "layer2" and a["stride"] == 2 and a["ckpt_path"] is None
    assert a["model"]["weights"].startswith("file ") and b["model"]["weights"] == "random (weights=None)"
    # Three of the nine photos, spread over the folder's order: one per class.
    assert [p.rsplit("/", 1)[-1] for p in data["images"]] == ["apple0.jpg", "bicycle0.jpg", "cloud0.jpg"]
    # The filters are the weights of the file for A: conv1 of the state_dict.
    sd = torch.load(resnet18_file)
    assert a["per_filter"]["rms"] == pytest.approx(sd["conv1.weight"].pow(2).mean(dim=(1, 2, 3)).sqrt().tolist(),
                                                   rel=1e-5)
    printed = capsys.readouterr().out
    assert "A model: torchvision resnet18" in printed and "B weights: random (weights=None)" in printed


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model_b", "resnet19"], "--model_b: 'resnet19' is not a torchvision classification model"),
        (["--model_b", "mobilenet_v3_small", "--checkpoint_b", "{sd}"], "--checkpoint_b: {sd} does not fit "),
        (["--feature_layer", "layer1", "layer2", "layer3"], "--feature_layer: one name for both models, or two"),
        (["--feature_layer", "layer9"], "--feature_layer: layer='layer9' is not a module of ResNet"),
    ],
)
def test_any_models_bad_input_one_message_no_output(resnet18_file, photo_folders, tmp_path, capsys, extra, words):
    argv = _any_options(resnet18_file)
    if extra[0] == "--model_b":
        argv = argv[: argv.index("--model_b")]
    work = tmp_path / "work"
    work.mkdir()
    extra = [a.format(sd=resnet18_file) for a in extra]
    with pytest.raises(SystemExit) as exc:
        compare_main([*argv, *extra, "--images", str(photo_folders[1]), "--out", str(work / "c"), "--maps", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words.format(sd=resnet18_file) in err[0], err
    assert list(work.iterdir()) == []
