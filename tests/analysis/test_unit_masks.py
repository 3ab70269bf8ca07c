"""The IoU pass's counting: pixel classes, sparse positions and mask counts equal dense,
brute-force computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zflight.analysis._unit_masks import (
    PixelClasses,
    Workspace,
    count_masks,
    true_positions,
    upsample_threshold,
)


def _random_masks(b: int, cp: int, h: int, w: int, n_concepts: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, cp, h, w, generator=g) < 0.3
    columns = torch.stack([torch.randperm(n_concepts, generator=g)[:cp] for _ in range(b)])
    # The last slot of image 0 is padding: concept index n_concepts and an empty mask.
    masks[0, -1] = False
    columns[0, -1] = n_concepts
    return masks, columns


def _dense(masks: torch.Tensor, columns: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """[B, C, H*W] bool: which concepts each pixel lies in."""
    b, cp, h, w = masks.shape
    dense = torch.zeros(b, n_concepts + 1, h * w, dtype=torch.bool)
    for i in range(b):
        for s in range(cp):
            dense[i, columns[i, s]] |= masks[i, s].reshape(-1)
    return dense[:, :n_concepts]


@pytest.mark.parametrize("cp, n_concepts", [(4, 10), (23, 30)], ids=["bit codes", "many concepts"])
def test_pixel_classes_give_every_pixel_its_concepts(cp, n_concepts):
    masks, columns = _random_masks(5, cp, 6, 7, n_concepts, seed=cp)
    classes = PixelClasses.of(masks, columns, n_concepts)
    dense = _dense(masks, columns, n_concepts)
    per_pixel = classes.incidence[classes.classes]  # [B, H*W, C + 2]
    assert torch.equal(per_pixel[..., :n_concepts].bool(), dense.transpose(1, 2))
    assert (per_pixel[..., n_concepts] == 0).all() and (per_pixel[..., n_concepts + 1] == 1).all()
    assert torch.equal(classes.pixels[:n_concepts], dense.sum(dim=(0, 2)).double())
    assert classes.pixels[n_concepts + 1] == 5 * 6 * 7


@pytest.mark.parametrize("n", [0, 7, 64, 1000, 4099])
def test_true_positions_equal_nonzero(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=g) < 0.02
    mask[-3:] = n > 0  # the last word, partly filled
    assert torch.equal(true_positions(mask), mask.nonzero().squeeze(1))


@pytest.mark.parametrize(
    "h, w, size", [(3, 3, (64, 64)), (5, 7, (33, 20)), (30, 30, (64, 64)), (9, 9, (4, 5))],
    ids=["3x3 up", "odd sizes", "30x30 up", "down"],
)
def test_count_masks_equal_a_dense_count_of_upsampled_masks(h, w, size):
    torch.manual_seed(h * w)
    b, n_units, n_concepts = 6, 70, 5  # 70 units: more maps than one padded group of 64
    maps = torch.randn(b, n_units, h, w)
    masks, columns = _random_masks(b, 3, *size, n_concepts, seed=1)
    present = PixelClasses.of(masks, columns, n_concepts)
    # Thresholds far (>1e-3) from every upsampled value, so any float rounding agrees.
    up = F.interpolate(maps.double(), size=size, mode="bilinear", align_corners=False)
    thresholds = torch.quantile(up.transpose(0, 1).reshape(n_units, -1), 0.97, dim=1).float()
    near = (up - thresholds.double()[None, :, None, None]).abs().amin(dim=(0, 2, 3)) < 1e-3
    thresholds[near] += 2e-3
    inside = up > thresholds.double()[None, :, None, None]  # [B, K, H, W]

    image, unit = torch.meshgrid(torch.arange(b), torch.arange(n_units), indexing="ij")
    got = count_masks(
        maps.reshape(-1, h, w), thresholds.repeat(b), image.reshape(-1), unit.reshape(-1), n_units, present
    ) @ present.incidence

    dense = _dense(masks, columns, n_concepts).double()  # [B, C, H*W]
    flat = inside.reshape(b, n_units, -1).double()
    expected = torch.einsum("bkp,bcp->kc", flat, dense)
    assert got.dtype == torch.float64
    assert torch.equal(got[:, :n_concepts], expected)
    assert torch.equal(got[:, -1], flat.sum(dim=(0, 2)))
    assert (got[:, n_concepts] == 0).all()


def test_count_masks_with_a_reused_workspace_equals_fresh_buffers():
    # The workspace hands out views of buffers from earlier (larger and smaller) calls; the
    # counts must not depend on what those buffers held.
    torch.manual_seed(3)
    masks, columns = _random_masks(4, 3, 64, 64, 6, seed=2)
    present = PixelClasses.of(masks, columns, 6)
    workspace = Workspace()
    for s, (h, w) in [(150, (6, 6)), (70, (30, 30)), (9, (3, 3)), (150, (6, 6))]:
        maps = torch.randn(s, h, w)
        maps[::7] = float("-inf")  # as dissect's rebuilt maps hold -inf where nothing was kept
        thresholds = torch.rand(s) + 0.5
        images, units = torch.arange(s) % 4, torch.arange(s) % 11
        fresh = count_masks(maps, thresholds, images, units, 11, present)
        reused = count_masks(maps, thresholds, images, units, 11, present, workspace=workspace)
        assert torch.equal(fresh, reused)
        assert fresh.sum() > 0


def test_upsample_threshold_is_f_interpolate_above_the_threshold():
    torch.manual_seed(4)
    maps, thresholds = torch.randn(70, 7, 5), torch.randn(70)
    got = upsample_threshold(maps, thresholds, (33, 20))  # [2 groups, H*W, 64]
    up = F.interpolate(maps[None], size=(33, 20), mode="bilinear", align_corners=False)[0]
    want = up.reshape(70, -1) > thresholds[:, None]
    assert torch.equal(got.transpose(1, 2).reshape(-1, 33 * 20)[:70], want)
    assert not got.transpose(1, 2).reshape(-1, 33 * 20)[70:].any()  # the padding lanes
