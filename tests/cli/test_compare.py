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
