"""dissect on a Broden-format folder: Network Dissection's per-category rule, exactly, against a
brute-force loop that reads the generator's truth (not the reader)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.analysis.test_dissection import CONCEPTS, FakeConcepts, small_cnn
from tests.broden_folder import LABELS, write_broden
from zflight.analysis.dissection import ConceptSubset, dissect, unit_examples
from zflight.data.broden import BrodenDataset

LAYERS = ["conv1", "relu2", "conv3"]  # 16x16 (the mask size: no upsampling), 8x8, 4x4


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden")
    truth = write_broden(root, 30, size=32, seed=0)
    return BrodenDataset(root), truth


def brute_force(model, ds, truth, layers, quantile):
    """All activations at once; per concept of category g, IoU summed over the images of g."""
    acts = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: acts.setdefault(n, o)) for n in layers]
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    sh, sw = 16, 16
    out = {}
    for name in layers:
        a = acts[name]
        thresholds = torch.stack([torch.quantile(a[:, k].flatten(), 1 - quantile) for k in range(a.shape[1])])
        masks = F.interpolate(a, size=(sh, sw), mode="bilinear", align_corners=False) > thresholds[None, :, None, None]
        inter = torch.zeros(a.shape[1], len(ds.concepts), dtype=torch.float64)
        union = torch.zeros_like(inter)
        for j, concept in enumerate(ds.concepts):
            g, label = concept.split("/", 1)
            number = next(k for k, (n, _c) in LABELS.items() if n == label)
            for i in range(len(ds)):
                if g not in truth[i]:
                    continue  # not in X_g: the image does not annotate g
                inside = torch.zeros(sh, sw, dtype=torch.bool)
                for layer in truth[i][g]:
                    if isinstance(layer, int):
                        inside |= layer == number  # a whole-image label
                    else:
                        inside |= torch.from_numpy(layer == number)
                inter[:, j] += (masks[i] & inside).flatten(1).sum(1)
                union[:, j] += (masks[i] | inside).flatten(1).sum(1)
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        out[name] = (thresholds, iou)
    return out


def test_equals_the_per_category_brute_force_exactly(broden):
    ds, truth = broden
    model = small_cnn()
    result = dissect(model, ds, LAYERS, batch_size=7, progress=False)
    with_workers = dissect(model, ds, LAYERS, batch_size=7, num_workers=2, progress=False)
    reference = brute_force(model, ds, truth, LAYERS, 0.005)
    for name in LAYERS:
        thresholds, iou = reference[name]
        ld = result.layers[name]
        assert torch.equal(ld.thresholds, thresholds)
        torch.testing.assert_close(ld.iou, iou, rtol=0, atol=1e-6)
        assert ld.labels == [ds.concepts[int(j)] for j in iou.argmax(dim=1)]
        assert torch.equal(ld.detectors, iou.amax(dim=1) > 0.04)
        assert torch.equal(with_workers.layers[name].iou, ld.iou)
    assert result.mask_size == (16, 16) and result.image_size == (32, 32)
    assert result.categories == ds.categories
    assert sum(result.summary()[n]["detectors"] for n in LAYERS) > 0  # not all decided at 0
    assert list(result.summary()["conv1"]["families"]) == ds.categories  # the count table


def test_a_texture_only_image_does_not_count_against_an_object(broden):
    ds, _truth = broden
    model = small_cnn()
    texture_only = [i for i in range(len(ds)) if ds.image_categories(i) == ["texture"]]
    others = [i for i in range(len(ds)) if i not in texture_only]
    objects = [j for j, c in enumerate(ds.concepts) if c.startswith("object/")]
    assert texture_only and objects
    everything = dissect(model, ds, "conv3", progress=False)
    # The thresholds come from every image; an object's IoU, from the images that annotate
    # objects only: the texture-only images' mask pixels are not in its union.
    t = everything.layers["conv3"].thresholds
    masks = _masks(model, ds, t)
    inter = sum((masks[i][:, None] & _labels(ds, i, objects)[None]).flatten(2).sum(2) for i in others)
    union = sum((masks[i][:, None] | _labels(ds, i, objects)[None]).flatten(2).sum(2) for i in others)
    torch.testing.assert_close(everything.layers["conv3"].iou[:, objects], (inter / union.clamp_min(1)).double(),
                               rtol=0, atol=1e-6)


def _masks(model, ds, thresholds):
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        a = model.conv3(model.relu2(model.conv2(model.relu1(model.conv1(x)))))
    return F.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False) > thresholds[None, :, None, None]


def _labels(ds, i, columns):
    got = ds.concept_masks(i)
    return torch.stack([got.get(ds.concepts[j], torch.zeros(16, 16, dtype=torch.bool)) for j in columns])


class _OneCategory(FakeConcepts):
    """FakeConcepts whose concepts all belong to categories that every image annotates."""

    @property
    def categories(self):
        return sorted({c.split("/")[0] for c in CONCEPTS})

    def image_categories(self, i):
        return self.categories


def test_categories_annotated_on_every_image_give_the_rule_without_categories():
    plain = dissect(small_cnn(), FakeConcepts(12, size=32, seed=2), ["relu1", "conv3"], progress=False)
    with_categories = dissect(small_cnn(), _OneCategory(12, size=32, seed=2), ["relu1", "conv3"], progress=False)
    a, b = plain.to_json(), with_categories.to_json()
    assert b["settings"].pop("categories") == _OneCategory(1).categories
    assert a == b


def test_tally_gives_each_units_best_concept_overall_and_per_category(broden):
    ds, _truth = broden
    result = dissect(small_cnn(), ds, "conv1", progress=False)
    ld = result.layers["conv1"]
    rows = result.tally("conv1")
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert sorted(r["unit"] for r in rows) == list(range(ld.num_units))
    for row in rows:
        k = row["unit"]
        assert f"{row['category']}/{row['label']}" == ld.labels[k] and row["score"] == float(ld.best_iou[k])
        for g in ds.categories:
            cols = [j for j, c in enumerate(ds.concepts) if c.startswith(g + "/")]
            best = max(cols, key=lambda j: (float(ld.iou[k, j]), -j))  # first on ties
            assert row[f"{g}-label"] == ds.concepts[best].split("/", 1)[1]
            assert row[f"{g}-iou"] == float(ld.iou[k, best])


def test_unit_examples_draw_the_mask_at_the_size_it_was_scored(broden):
    ds, _truth = broden
    model = small_cnn()
    result = dissect(model, ds, "conv3", progress=False)
    ex = unit_examples(model, ds, result, {"conv3": [0, 5]}, k=2)["conv3"]
    assert ex.images.shape[-2:] == (32, 32) and ex.masks.shape[-2:] == (16, 16)
    scored = _masks(model, ds, result.layers["conv3"].thresholds)
    for u, unit in enumerate([0, 5]):
        for j in range(2):
            assert torch.equal(ex.masks[u, j], scored[int(ex.indices[u, j]), unit])


def test_a_mask_of_another_size_than_mask_size_names_it(broden):
    ds, _truth = broden

    class Wrong(ConceptSubset):
        mask_size = (15, 16)

    with pytest.raises(ValueError, match=r"concept_masks\(0\)\['.*'\] has shape \(16, 16\), but dataset.mask_size of image 0 is 15x16"):
        dissect(small_cnn(), Wrong(ds, range(4)), "conv1", progress=False)
