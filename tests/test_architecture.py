import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analyses.compare_cli import main as compare_main
from zflight.attribution.architecture import (
    architecture_report,
    dead_filters,
    filter_rms,
    inactive_channels,
    layer_projections,
    shift_aliasing,
    spectral_bands,
    stride_aliasing,
)
from zflight.models import zfnet
from zflight.module import ImageClassifier


def _cosine_filter(k: int, size: int = 7) -> torch.Tensor:
    """A 7x7 filter varying along x at exactly DFT bin k: frequency k/7 cycles per pixel."""
    x = torch.arange(size, dtype=torch.float64)
    row = torch.cos(2 * math.pi * k * x / size)
    return row.expand(size, size).float()[None, None]


def test_dead_filter_is_found_by_rms():
    torch.manual_seed(0)
    w = torch.randn(12, 3, 7, 7)
    w[4] *= 1e-3
    assert dead_filters(w).nonzero().flatten().tolist() == [4]
    assert filter_rms(torch.full((1, 3, 2, 2), 0.5)).tolist() == [0.5]
    with pytest.raises(ValueError, match="weight"):
        dead_filters(torch.ones(3, 7, 7))


def test_spectral_bands_of_known_frequencies():
    # Normalized radius of bin k of 7 along x: (k/7)/0.5 = 2k/7 -> 0 (DC), .29 low, .57 mid, .86 high
    bank = torch.cat([torch.ones(1, 1, 7, 7), _cosine_filter(1), _cosine_filter(2), _cosine_filter(3)])
    bands = spectral_bands(bank)
    expected = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert torch.allclose(bands, expected, atol=1e-5)
    # A mixture: equal power in the mid and high cosines.
    mix = _cosine_filter(2) + _cosine_filter(3)
    assert torch.allclose(spectral_bands(mix), torch.tensor([[0.0, 0.5, 0.5]]), atol=1e-5)
    # Zero padded, a flat filter is a box whose sinc spectrum is mostly, not only, low.
    padded = spectral_bands(torch.ones(1, 3, 7, 7), n_fft=32)[0]
    assert padded[0] > 0.8 and padded.sum() == pytest.approx(1.0)


def test_stride_aliasing_of_known_frequencies():
    alternating = torch.tensor([1.0, -1.0, 1.0, -1.0]).expand(4, 4)[None, None]  # 0.5 cycles/px
    assert stride_aliasing(alternating, 2).item() == pytest.approx(1.0)
    assert stride_aliasing(alternating, 1).item() == pytest.approx(0.0)
    slow = _cosine_filter(1)  # 1/7 = 0.143 cycles/px: aliases at stride 4 (Nyquist 0.125), not 2
    assert stride_aliasing(slow, 4).item() == pytest.approx(1.0, abs=1e-5)
    assert stride_aliasing(slow, 2).item() == pytest.approx(0.0, abs=1e-5)


class _Sampler(nn.Module):
    """A 1x1 identity conv with the given stride: it just samples the image."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1, stride=stride, bias=False)))
        with torch.no_grad():
            self.features.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_shift_aliasing_of_a_checkerboard_is_known():
    i = torch.arange(8)
    board = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float()[None, None]  # +-1 checkerboard
    # Sampling every 2nd pixel sees all +1 or all -1: every one-pixel step flips the mean, a
    # change of 2 relative to its norm 1.
    assert shift_aliasing(_Sampler(2), "conv", board, max_shift=3)["score"] == pytest.approx(2.0)
    # Sampling every pixel: the mean of a circularly shifted image never changes.
    assert shift_aliasing(_Sampler(1), "conv", board, max_shift=3)["score"] == pytest.approx(0.0, abs=1e-6)


def test_inactive_channel_is_found():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 1), relu=nn.ReLU()))
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.weight[1] = 0.0
        model.conv.bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    assert inactive_channels(model, "relu", torch.rand(4, 1, 5, 5) + 0.1).tolist() == [False, True, False]


def test_report_on_zfnet_restores_modes_and_removes_hooks():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").train()
    x = torch.randn(4, 3, 64, 64)
    report = architecture_report(model, x, max_shift=2)
    d = report.to_dict()
    json.dumps(d)
    assert d["stride"] == 2 and d["filter_layer"] == "features.conv1"
    assert sum(d["spectral_bands"].values()) == pytest.approx(1.0, abs=1e-5)
    assert len(d["shift_aliasing"]["per_shift"]["rows"]) == 2
    proj, channels, picks = layer_projections(model, "relu2", x, maps=3)
    assert proj.shape == (3, 3, 64, 64) and len(channels) == 3 and all(0 <= p < 4 for p in picks)
    assert model.training and all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="Conv2d"):
        architecture_report(model, x, filter_layer="relu1")


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
