"""python -m zflight evaluate: files written, numbers equal to the metrics, the sanity curves,
one error line per bad input and nothing in --out."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zflight.analysis.evaluation import pointing_game, relevance, relevance_mass
from zflight.attribution.methods import attribute
from zflight.cli import main as zflight_main
from zflight.cli._common import embedded_dataset, load_network


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(val_size=12)


def _run(ckpt, out, *extra):
    return zflight_main(["evaluate", "--ckpt_path", str(ckpt), "--out", str(out), *extra])


def test_writes_table_json_png_with_the_metrics_numbers(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "ev"
    doc = _run(tiny_ckpt, out, "--methods", "saliency", "random", "--num_images", "5",
               "--steps", "4", "--batch_size", "5", "--show", "2")
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.png", "scores.json", "scores.md"]
    assert (out / "evaluation.png").stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["ev"]  # no temporary folder left
    data = json.loads((out / "scores.json").read_text())
    assert data == json.loads(json.dumps(doc))
    assert data["methods"] == ["saliency", "random"]
    assert data["metrics"] == ["pointing_game", "relevance_mass", "relevance_rank", "deletion_auc", "insertion_auc"]

    # The saliency numbers are the metrics of the saliency maps of the first 5 val images.
    model, hp, data_hp = load_network(tiny_ckpt)
    ds = embedded_dataset(hp, data_hp, "val")
    x = torch.stack([ds[i][0] for i in range(5)])
    y = torch.tensor([ds[i][1] for i in range(5)])
    masks = torch.stack([ds.mask(i) for i in range(5)])
    r = relevance(attribute("saliency", model, x, y).double())
    for metric, fn in (("pointing_game", pointing_game), ("relevance_mass", relevance_mass)):
        per_image = fn(r, masks)
        cell = data["scores"]["saliency"][metric]
        assert data["per_image"]["saliency"][metric] == pytest.approx(per_image.tolist(), abs=1e-12)
        assert cell["n"] == 5
        assert cell["mean"] == pytest.approx(float(per_image.mean()), abs=1e-12)
        assert cell["sem"] == pytest.approx(float(per_image.std()) / math.sqrt(5), abs=1e-12)
    assert data["labels"] == y.tolist()

    # The Markdown table is written and printed: one row per method, mean ± sem per metric.
    md = (out / "scores.md").read_text()
    printed = capsys.readouterr().out
    assert md.strip() in printed
    row = next(line for line in md.splitlines() if line.startswith("| saliency |"))
    mass = data["scores"]["saliency"]["relevance_mass"]
    assert f"{mass['mean']:.3f} ± {mass['sem']:.3f}" in row and row.endswith("| 5 |")


def test_sanity_writes_the_randomization_curves(tiny_ckpt, tmp_path):
    out = tmp_path / "ev"
    _run(tiny_ckpt, out, "--methods", "saliency", "random", "--metrics", "pointing_game",
         "--num_images", "3", "--show", "1", "--sanity", "--sanity_images", "2")
    assert (out / "sanity.png").stat().st_size > 10_000
    sanity = json.loads((out / "scores.json").read_text())["sanity"]
    assert sanity["mode"] == "cascading" and sanity["images"] == 2
    assert sanity["layers"][0] == "classifier.fc8" and sanity["layers"][-1] == "features.conv1"
    # The random baseline does not look at the model: identical maps at every layer.
    random = sanity["methods"]["random"]
    assert random["spearman"] == [[1.0, 1.0]] * len(sanity["layers"])
    # Saliency does: randomizing the whole network changes its maps.
    assert max(sanity["methods"]["saliency"]["spearman"][-1]) < 0.99


def _foreign_ckpt(tmp_path):
    """A checkpoint whose data module read an image folder, not the embedded shapes."""
    from zflight.module import ImageClassifier

    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64)
    path = tmp_path / "folder.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"root": "/data/imagenet", "image_size": 64}}, path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "deconvnet", "gradcamm"],
         "--methods: method 'gradcamm' does not exist (did you mean 'gradcam'?); valid methods: "
         "deconvnet, deconvnet_project, saliency, guided_backprop, occlusion, gradcam, integrated_gradients, random"),
        (["--metrics", "pointing"], "--metrics: metric 'pointing' does not exist (did you mean 'pointing_game'?)"),
        (["--num_images", "13"], "--num_images: 13 is larger than the val split (12 images)"),
        (["--num_images", "0"], "--num_images must be >= 1, got 0"),
        (["--num_images", "five"], "argument --num_images: invalid int value: 'five'"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--batch_size", "-2"], "--batch_size must be >= 1, got -2"),
        (["--num_images", "3", "--show", "4"], "--show: 4 images to draw but only --num_images 3 scored"),
        (["--num_images", "3", "--sanity", "--sanity_images", "4"], "--sanity_images: 4 is more than"),
        (["--device", "gpu0"], "--device: "),
        ("foreign", "--ckpt_path: the checkpoint was not trained on the embedded shapes data set"),
    ],
)
def test_bad_input_one_error_line_nothing_written(tiny_ckpt, tmp_path, capsys, extra, message):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    ckpt = _foreign_ckpt(ckpt_dir) if extra == "foreign" else tiny_ckpt
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SystemExit) as exc:
        _run(ckpt, work / "ev", *([] if extra == "foreign" else extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m zflight evaluate: error: ")
    assert message in err[0]
    assert list(work.iterdir()) == []
