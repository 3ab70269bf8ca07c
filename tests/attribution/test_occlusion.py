"""occlusion_maps: equals a one-position-at-a-time loop, its grid, layer semantics, Captum, errors;
the occlusion figure, CLI, callback and object-box check."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from zflight import zfnet
from zflight.attribution import forward_to, resolve_layer
from zflight.attribution.occlusion import occlusion_maps


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


def brute_force(model, images, targets, size, stride, fill=0.0, layer=None):
    """Occlude one position of one image at a time, in the most literal way."""
    n, _, h, w = images.shape
    module = resolve_layer(model, layer)[1] if layer is not None else None
    probs, labels, acts, channels = [], [], [], []
    with torch.no_grad():
        for i in range(n):
            x = images[i : i + 1]
            if module is not None:
                fmap = forward_to(model, module, x)[0]
                channels.append(int(fmap.reshape(fmap.shape[0], -1).amax(dim=1).argmax()))
            p_rows, l_rows, a_rows = [], [], []
            for r in range(0, h - size + 1, stride):
                p_row, l_row, a_row = [], [], []
                for c in range(0, w - size + 1, stride):
                    occluded = x.clone()
                    occluded[:, :, r : r + size, c : c + size] = fill
                    p = torch.softmax(model(occluded), dim=1)[0]
                    p_row.append(float(p[targets[i]]))
                    l_row.append(int(p.argmax()))
                    if module is not None:
                        a_row.append(float(forward_to(model, module, occluded)[0, channels[-1]].sum()))
                p_rows.append(p_row)
                l_rows.append(l_row)
                a_rows.append(a_row)
            probs.append(p_rows)
            labels.append(l_rows)
            acts.append(a_rows)
    return torch.tensor(probs), torch.tensor(labels), torch.tensor(acts), torch.tensor(channels)


# ----------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    ("size", "stride", "batch_size", "layer"),
    [(16, 8, 64, "relu5"), (24, 10, 5, "conv3"), (64, 1, 7, None), (9, 11, 4, "fc7")],
)
def test_equals_brute_force_loop(model, images, size, stride, batch_size, layer):
    targets = [3, 7, 0]
    maps = occlusion_maps(
        model, images, targets, size=size, stride=stride, layer=layer, batch_size=batch_size
    )
    prob, label, act, chan = brute_force(model, images, targets, size, stride, layer=layer)
    assert maps.prob.shape == prob.shape == (3, *maps.grid)
    torch.testing.assert_close(maps.prob, prob, rtol=1e-5, atol=1e-6)
    assert torch.equal(maps.label, label)
    if layer is None:
        assert maps.activation is None and maps.channel is None and maps.layer is None
    else:
        assert torch.equal(maps.channel, chan)
        torch.testing.assert_close(maps.activation, act, rtol=1e-4, atol=1e-4)


def test_nonzero_per_channel_fill_equals_brute_force(model, images):
    fill = torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1)
    maps = occlusion_maps(model, images[:1], 2, size=20, stride=22, fill=[0.5, -1.0, 2.0])
    prob, label, _, _ = brute_force(model, images[:1], [2], 20, 22, fill=fill)
    torch.testing.assert_close(maps.prob, prob, rtol=1e-5, atol=1e-6)
    assert torch.equal(maps.label, label)


class PixelReader(nn.Module):
    """Class k's logit is 10 × pixel k of channel 0: occluding pixel k (fill 0) lowers class k."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * x[:, 0].flatten(1)


def test_square_positions_are_0_stride_up_to_h_minus_size():
    h, w, size, stride = 10, 12, 3, 2  # H - size = 7: rows 0, 2, 4, 6; W - size = 9: 0 .. 8
    images = torch.ones(1, 1, h, w)
    for py, px in [(0, 0), (5, 7), (9, 11), (8, 10)]:
        maps = occlusion_maps(PixelReader(), images, py * w + px, size=size, stride=stride)
        assert maps.grid == (4, 5)
        assert maps.rows.tolist() == [0, 2, 4, 6] and maps.cols.tolist() == [0, 2, 4, 6, 8]
        covered = torch.zeros(maps.grid, dtype=torch.bool)
        for r, top in enumerate(maps.rows.tolist()):
            for c, left in enumerate(maps.cols.tolist()):
                covered[r, c] = top <= py < top + size and left <= px < left + size
                x0, y0, x1, y1 = maps.square(r, c)
                assert (x0, y0, x1, y1) == (left, top, left + size, top + size)
        # The target's probability drops exactly where the square hides its pixel.
        assert torch.equal(maps.prob[0] < maps.base_prob[0] - 1e-6, covered)


def test_layer_channel_is_the_map_with_the_highest_single_activation(model, images):
    maps = occlusion_maps(model, images, [1, 2, 3], size=32, stride=32, layer="relu5")
    fmap = forward_to(model, resolve_layer(model, "relu5")[1], images)
    expected = fmap.flatten(2).amax(dim=2).argmax(dim=1)
    assert torch.equal(maps.channel, expected)
    sums = fmap.flatten(2).sum(dim=2).gather(1, expected[:, None]).squeeze(1)
    torch.testing.assert_close(maps.base_activation, sums)
    assert maps.layer == "features.relu5"
    # The same layer given as a module gives the same maps.
    again = occlusion_maps(model, images, [1, 2, 3], size=32, stride=32,
                           layer=model.features.relu5)
    torch.testing.assert_close(again.activation, maps.activation)


def test_targets_none_tracks_the_predicted_class(model, images):
    maps = occlusion_maps(model, images, None, size=32, stride=32)
    predicted = model(images).argmax(dim=1)
    assert torch.equal(maps.targets, predicted) and torch.equal(maps.base_label, predicted)


def test_modes_are_restored_and_hooks_removed(model, images):
    model.train()
    model.features.relu5.eval()
    try:
        occlusion_maps(model, images[:1], 0, size=32, stride=32, layer="relu5")
        assert model.training and not model.features.relu5.training
        assert all(m.training for n, m in model.named_modules() if n != "features.relu5")
        assert not model.features.relu5._forward_hooks
    finally:
        model.eval()


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.conv(x).mean(dim=(2, 3))
        if self.calls > 1:
            raise RuntimeError("boom")
        return self.head(h)


def test_a_failing_forward_leaves_no_hook_and_restores_modes():
    net = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        occlusion_maps(net, torch.randn(1, 3, 8, 8), 0, size=4, stride=4, layer="conv")
    assert not net.conv._forward_hooks and net.training and net.conv.training


def test_progress_bar_on_request(model, images, capsys):
    occlusion_maps(model, images[:1], 0, size=32, stride=32, progress=True)
    assert "occlusion" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Captum
class Softmaxed(nn.Module):
    """The classifier with the softmax applied: Captum's output is then the probability."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def test_captum_non_overlapping_windows_get_p_unoccluded_minus_p_occluded(model, images):
    from captum.attr import Occlusion

    size = 16  # stride == size: 4 × 4 windows that tile the 64-pixel image
    targets = torch.tensor([3, 7, 0])
    maps = occlusion_maps(model, images, targets, size=size, stride=size)
    attr = Occlusion(Softmaxed(model)).attribute(
        images, sliding_window_shapes=(3, size, size), strides=size, baselines=0.0,
        target=targets,
    )
    drop = maps.base_prob[:, None, None] - maps.prob  # [N, 4, 4]
    for r in range(4):
        for c in range(4):
            window = attr[:, :, r * size : (r + 1) * size, c * size : (c + 1) * size]
            expected = drop[:, r, c].view(-1, 1, 1, 1).expand_as(window)
            torch.testing.assert_close(window, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("size", "stride", "fill"), [(16, 8, 0.0), (12, 4, -0.5)])
def test_captum_overlapping_windows_equal_pixel_attribution(model, images, size, stride, fill):
    from captum.attr import Occlusion

    targets = torch.tensor([1, 5, 9])
    maps = occlusion_maps(model, images, targets, size=size, stride=stride, fill=fill)
    attr = Occlusion(Softmaxed(model)).attribute(
        images, sliding_window_shapes=(3, size, size), strides=stride, baselines=fill,
        target=targets, perturbations_per_eval=16,
    )
    ours = maps.pixel_attribution()
    for ch in range(3):  # the window spans all channels, so every channel gets the same value
        torch.testing.assert_close(attr[:, ch], ours, rtol=1e-4, atol=1e-6)


def test_log_pixel_attribution_equals_captum_on_log_softmax(model, images):
    from captum.attr import Occlusion

    targets = torch.tensor([1, 5, 9])
    maps = occlusion_maps(model, images, targets, size=12, stride=4)
    attr = Occlusion(lambda x: torch.log_softmax(model(x), dim=1)).attribute(
        images, sliding_window_shapes=(3, 12, 12), strides=4, baselines=0.0, target=targets,
        perturbations_per_eval=16,
    )
    torch.testing.assert_close(attr[:, 0], maps.pixel_attribution(log=True), rtol=1e-4, atol=1e-6)


def test_log_pixel_attribution_of_a_saturated_model_is_not_zero(images):
    # Logits 40 apart: the target's probability is 1.0 in float32 under every square, so the
    # probability map is all zero; the log-probability map still ranks the squares.
    net = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        net(images)
        net[2].bias.copy_(torch.tensor([40.0, 0.0]))
    maps = occlusion_maps(net, images, 0, size=16, stride=8)
    assert (maps.pixel_attribution() == 0).all()
    assert (maps.pixel_attribution(log=True) != 0).any()


def test_log_pixel_attribution_without_log_probabilities_names_the_argument(model, images):
    maps = occlusion_maps(model, images, 0, size=16, stride=8)
    legacy = dataclasses.replace(maps, log_prob=None, base_log_prob=None)
    with pytest.raises(ValueError, match="log=True"):
        legacy.pixel_attribution(log=True)


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 65, "stride": 8}, "size"),
        ({"size": 0, "stride": 8}, "size"),
        ({"size": 16, "stride": 0}, "stride"),
        ({"size": 16, "stride": 8, "targets": 10}, "targets"),
        ({"size": 16, "stride": 8, "targets": [0, -1, 2]}, "targets"),
        ({"size": 16, "stride": 8, "targets": [0, 1]}, "targets"),
        ({"size": 16, "stride": 8, "layer": "conv9"}, "layer"),
        ({"size": 16, "stride": 8, "fill": [0.0, 1.0]}, "fill"),
        ({"size": 16, "stride": 8, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(model, images, kwargs, name):
    kwargs = dict(kwargs)
    targets = kwargs.pop("targets", [0, 1, 2])
    with pytest.raises(ValueError, match=name):
        occlusion_maps(model, images, targets, **kwargs)


def test_layer_never_reached_and_bad_images_are_value_errors(model, images):
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.ReLU()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(x.mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="layer='unused'.*never called"):
        occlusion_maps(Skips(), images, 0, size=8, stride=8, layer="unused")
    with pytest.raises(ValueError, match="images"):
        occlusion_maps(model, images[0], 0, size=8, stride=8)
    with pytest.raises(ValueError, match="images"):
        occlusion_maps(model, images.to(torch.uint8), 0, size=8, stride=8)
