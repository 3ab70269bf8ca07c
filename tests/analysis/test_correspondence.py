import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.correspondence import (
    apply_masks,
    correspondence,
    correspondence_delta,
    feature_changes,
    keypoint_masks,
    random_masks_like,
    sign_hamming,
)
from zflight.data import ShapesDataset
from zflight.models import zfnet


def test_sign_hamming_by_hand():
    a = torch.tensor([1.0, -2.0, 0.0, 3.0])
    b = torch.tensor([5.0, 1.0, 0.0, 0.0])
    # signs: (+,-,0,+) vs (+,+,0,0): positions 1 and 3 differ -> 2 of 4.
    assert sign_hamming(a, b).item() == 0.5


def test_delta_sums_ordered_pairs_of_normalized_hamming():
    eps = torch.tensor(
        [
            [1.0, -1.0, 0.0, 2.0],
            [1.0, 1.0, 0.0, 2.0],  # differs from rows 0 and 2 in position 1
            [3.0, -7.0, 0.0, 9.0],  # same signs as row 0
        ]
    )
    # unordered pairs: (0,1) 1/4, (0,2) 0, (1,2) 1/4 -> ordered sum 2 * 0.5 = 1.0
    assert correspondence_delta(eps).item() == pytest.approx(1.0)
    assert correspondence_delta(eps, per_pair=True).item() == pytest.approx(1.0 / 6)
    assert correspondence_delta(torch.ones(4, 10)).item() == 0.0
    with pytest.raises(ValueError, match="eps"):
        correspondence_delta(torch.ones(1, 3))


class _Pixels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Sequential(OrderedDict(flat=nn.Flatten(1), fc=nn.Linear(16, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


def test_part_masks_over_same_signed_content_have_zero_delta_and_random_is_known():
    # Four 4x4 one-channel images, all positive; hiding any pixels with fill 0 makes eps > 0
    # exactly there. The same mask in every image -> identical sign patterns -> Δ = 0.
    images = torch.rand(4, 1, 4, 4) + 0.5
    part = torch.zeros(4, 4, 4, dtype=torch.bool)
    part[:, 0, 0] = True
    result = correspondence(_Pixels(), images, {"corner": part}, layers=["feat"], subset_size=4, repeats=3)
    assert result.mean("corner", "feat") == 0.0 and result.std("corner", "feat") == 0.0
    # A single-pixel random mask: two images disagree in 2 of 16 positions unless they share it.
    for r in range(3):
        moved = random_masks_like(part, torch.Generator().manual_seed(r))
        assert moved.sum(dim=(1, 2)).tolist() == [1, 1, 1, 1]
    values = result.delta["random"]["feat"]
    assert ((values >= 0) & (values <= 12 * 2 / 16 + 1e-6)).all()
    assert result.rows == ["corner", "random"]
    json.dumps(result.to_dict())
    assert "corner" in result.table()


def test_random_masks_keep_shape_and_stay_inside():
    m = torch.zeros(3, 10, 10, dtype=torch.bool)
    m[:, 2:5, 3:7] = True
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        moved = random_masks_like(m, g)
        for k in range(3):
            rows = moved[k].any(dim=1).nonzero()[:, 0]
            cols = moved[k].any(dim=0).nonzero()[:, 0]
            assert int(moved[k].sum()) == 12
            assert rows[-1] - rows[0] == 2 and cols[-1] - cols[0] == 3


def test_feature_changes_are_zero_outside_the_mask_and_apply_masks_fills():
    images = torch.ones(1, 1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    assert apply_masks(images, mask, fill=-1.0)[0, 0, 1, 2] == -1.0
    eps = feature_changes(_Pixels(), images, mask, ["feat"])["feat"]
    assert eps.shape == (1, 16)
    assert eps[0].nonzero()[:, 0].tolist() == [1 * 4 + 2]


def test_keypoint_masks_center_on_the_landmark():
    ds = ShapesDataset(20, seed=1)
    idx = [i for i in range(20) if ds.classes[ds.targets[i]] == "arrow"]
    masks = keypoint_masks(ds, idx, "tip", 9)
    for k, i in enumerate(idx):
        x, y = ds.keypoints(i)["tip"]
        assert masks[k, int(y), int(x)]
    with pytest.raises(ValueError, match="part='nose'"):
        keypoint_masks(ds, idx, "nose", 9)
    with pytest.raises(ValueError, match="size"):
        keypoint_masks(ds, idx, "tip", 100)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(subset_size=9), "subset_size"),
        (dict(layers=["conv9"]), "conv9"),
        (dict(random_like="nose"), "random_like"),
        (dict(repeats=0), "repeats"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, words):
    model = zfnet(num_classes=10, width=0.125, image_size=64)
    masks = {"a": torch.zeros(3, 64, 64, dtype=torch.bool)}
    with pytest.raises(ValueError, match=words):
        correspondence(model, torch.zeros(3, 3, 64, 64), masks, **{"subset_size": 2, **kwargs})


def test_zfnet_modes_restored_and_hooks_removed():
    model = zfnet(num_classes=10, width=0.125, image_size=64).train()
    masks = {"a": torch.zeros(3, 64, 64, dtype=torch.bool)}
    masks["a"][:, 10:20, 10:20] = True
    res = correspondence(model, torch.randn(3, 3, 64, 64), masks, subset_size=2, repeats=2)
    assert res.layers == ["features.relu5", "classifier.relu7"]
    assert model.training and all(not m._forward_hooks for m in model.modules())
