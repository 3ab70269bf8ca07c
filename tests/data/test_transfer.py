import torch

from zflight.data import SHAPES_CLASSES, ShapesDataset, TransferShapesDataset


def test_ten_new_classes_with_balanced_labels():
    ds = TransferShapesDataset(30)
    assert len(ds.classes) == 10 and not set(ds.classes) & set(SHAPES_CLASSES)
    assert sorted(ds.targets[:10]) == list(range(10)) and sorted(ds.targets[10:20]) == list(range(10))
    assert ds.concepts[0] == "object/pentagon"


def test_only_the_outline_differs_from_the_shapes_generator():
    ours, theirs = TransferShapesDataset(4, seed=5), ShapesDataset(4, seed=5)
    for i in range(4):
        outside = ~(ours.mask(i) | theirs.mask(i))
        # same background, distractors and noise wherever neither object is (the colour draw
        # may differ, since it looks under each object's own landmarks)
        same = (ours.image(i) == theirs.image(i)).all(dim=0)
        assert same[outside].float().mean() > 0.9
        x0, y0, x1, y1 = ours.box(i)
        assert ours.mask(i)[y0:y1, x0:x1].sum() == ours.mask(i).sum() > 0
    assert torch.equal(TransferShapesDataset(4, seed=5).image(2), ours.image(2))
