"""dissect: equals a brute-force Network Dissection exactly, merges DDP shards, leaves the model
as found, and names the argument of every bad input."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from zflight import zfnet
from zflight.analysis.dissection import CONCEPT_FAMILIES, Dissection, dissect
from zflight.data import ShapesDataset

CONCEPTS = ["object/a", "object/b", "color/red", "color/blue", "part/a/tip", "distractor", "background"]


class FakeConcepts(Dataset):
    """Random images with rectangle concept masks; only present concepts are returned.

    The images carry their masks (a concept brightens one channel inside its mask), so that
    some units do overlap some concepts and the labels are not all decided by ties at 0.
    """

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.concepts = list(CONCEPTS)
        self.masks = torch.zeros(n, len(CONCEPTS), size, size, dtype=torch.bool)
        for i in range(n):
            for c in range(len(CONCEPTS)):
                if torch.rand((), generator=g) < 0.5:
                    continue  # absent from this image
                y0, x0 = torch.randint(0, size - 4, (2,), generator=g).tolist()
                h, w = torch.randint(3, size // 2, (2,), generator=g).tolist()
                self.masks[i, c, y0 : y0 + h, x0 : x0 + w] = True
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.5
        for c in range(len(CONCEPTS)):
            self.images[:, c % 3] += 1.5 * self.masks[:, c] * (1 if c % 2 else -1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], 0

    def concept_masks(self, i: int) -> dict[str, torch.Tensor]:
        return {c: self.masks[i, j].clone() for j, c in enumerate(self.concepts) if self.masks[i, j].any()}


def small_cnn() -> nn.Module:
    # Unit counts are multiples of 16 so that the brute force's whole-layer F.interpolate runs
    # PyTorch's vectorized CPU path for every unit, as dissect does (see _CHANNEL_PAD).
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, stride=2, padding=1),  # 16x16
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 8x8
            relu2=nn.ReLU(),
            conv3=nn.Conv2d(32, 16, 3, stride=2, padding=1),  # 4x4
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(16, 3),
        )
    )


def brute_force(model: nn.Module, dataset, layers: list[str], quantile: float, iou_threshold: float):
    """All activations in memory, torch.quantile per unit, IoU summed image by image."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda _m, _i, o, name=name: acts.setdefault(name, o))
             for name in layers]
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    was = model.training
    model.eval()
    with torch.no_grad():
        model(images)
    model.train(was)
    for h in hooks:
        h.remove()
    size = images.shape[-2:]
    labels = torch.stack([
        torch.stack([dataset.concept_masks(i).get(c, torch.zeros(size, dtype=torch.bool)) for c in dataset.concepts])
        for i in range(len(dataset))
    ])  # [N, C, H, W]
    out = {}
    for name in layers:
        a = acts[name]
        thresholds = torch.stack([torch.quantile(a[:, k].flatten(), 1 - quantile) for k in range(a.shape[1])])
        up = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        masks = up > thresholds[None, :, None, None]
        inter = torch.zeros(a.shape[1], len(dataset.concepts), dtype=torch.float64)
        union = torch.zeros_like(inter)
        for i in range(len(dataset)):
            m = masks[i].flatten(1).double()
            lab = labels[i].flatten(1).double()
            both = m @ lab.T
            inter += both
            union += m.sum(1)[:, None] + lab.sum(1)[None, :] - both
        iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
        best = iou.argmax(1)
        out[name] = {
            "thresholds": thresholds,
            "iou": iou,
            "labels": [dataset.concepts[int(j)] for j in best],
            "detectors": iou.gather(1, best[:, None])[:, 0] > iou_threshold,
        }
    return out


@pytest.fixture(scope="module")
def data() -> FakeConcepts:
    return FakeConcepts(40, size=32, seed=1)


@pytest.fixture(scope="module")
def reference(data):
    return brute_force(small_cnn(), data, ["relu1", "conv2", "conv3"], 0.005, 0.04)


def _assert_matches(result: Dissection, expected: dict, keys: list[str]) -> None:
    for key in keys:
        got, want = result.layers[key], expected[key]
        # Thresholds exactly: same values, same torch.quantile arithmetic.
        assert torch.equal(got.thresholds, want["thresholds"]), key
        assert (got.iou - want["iou"]).abs().max() <= 1e-6, key
        assert got.labels == want["labels"], key
        assert torch.equal(got.detectors, want["detectors"]), key


@pytest.mark.parametrize("batch_size", [7, 64])
def test_equals_brute_force_exactly(data, reference, batch_size):
    result = dissect(small_cnn(), data, ["relu1", "conv2", "conv3"], batch_size=batch_size, progress=False)
    _assert_matches(result, reference, ["relu1", "conv2", "conv3"])
    # The test is not vacuous: units do overlap concepts, with different labels.
    assert result.layers["relu1"].detectors.any()
    assert len(set(result.layers["conv2"].labels)) > 1
    assert result.concepts == CONCEPTS


def test_equals_brute_force_on_zfnet_and_larger_quantile():
    # conv1 of this width has 12 units: not a multiple of the vector width, so the brute force's
    # F.interpolate may round its last 4 maps differently by an ulp; conv2-conv5 are compared.
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")
    data = FakeConcepts(24, size=64, seed=2)
    layers = ["features.conv2", "features.conv3", "features.conv5"]
    expected = brute_force(model, data, layers, 0.02, 0.04)
    result = dissect(model, data, ["conv2", "conv3", "conv5"], quantile=0.02, batch_size=10, progress=False)
    for key, name in zip(["conv2", "conv3", "conv5"], layers):
        result.layers[name] = result.layers[key]
    _assert_matches(result, expected, layers)


def test_equals_brute_force_on_shapes_concepts():
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")
    data = ShapesDataset(12, image_size=64, seed=5)
    layers = ["features.conv2", "features.conv4"]
    expected = brute_force(model, data, layers, 0.005, 0.04)
    result = dissect(model, data, layers, batch_size=5, progress=False)
    _assert_matches(result, expected, layers)
    assert result.concepts == data.concepts
    families = {c.split("/", 1)[0] for c in data.concepts}
    assert families == set(CONCEPT_FAMILIES)
    assert set(result.summary()["features.conv2"]["families"]) == families


def test_runs_one_forward_pass_over_the_data():
    # Pass 2 rebuilds every map that can reach a mask from what pass 1 kept: no second forward.
    model, calls = small_cnn(), []
    model.conv1.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    dissect(model, FakeConcepts(23, size=32, seed=1), ["conv1", "conv3"], batch_size=5, progress=False)
    assert calls == [5, 5, 5, 5, 3]


class _Steps(nn.Module):
    """Activations rounded to steps of 0.25: thousands of ties, at the threshold too."""

    def forward(self, x):
        return torch.round(x * 4) / 4


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "negative values too"])
def test_tied_activations_at_the_threshold_equal_brute_force(relu):
    # Values equal to T_k beyond the top m can still reach M_k through the kernel's rounding:
    # dissect keeps them (and near-ties) in pass 1. Compared exactly, as the other tests.
    torch.manual_seed(1)
    layers = [("conv", nn.Conv2d(3, 16, 3, stride=2, padding=1))]
    layers += [("relu", nn.ReLU())] if relu else []
    model = nn.Sequential(OrderedDict([*layers, ("steps", _Steps())]))
    data = FakeConcepts(30, size=29, seed=6)  # 15x15 maps: inexact bilinear weights
    expected = brute_force(model, data, ["steps"], 0.02, 0.04)
    result = dissect(model, data, "steps", quantile=0.02, batch_size=8, progress=False)
    _assert_matches(result, expected, ["steps"])
    # The test is not vacuous: thresholds sit on tied values.
    with torch.no_grad():
        acts = model(torch.stack([data[i][0] for i in range(len(data))]))
    thresholds = result.layers["steps"].thresholds
    ties = (acts == thresholds[None, :, None, None]).sum(dim=(0, 2, 3))
    assert (ties > 10).sum() >= 8


def test_nan_activations_give_nan_thresholds_as_torch_quantile():
    class NaNUnit(nn.Module):
        def forward(self, x):
            x = x.clone()
            x[0, 0, 0, 0] = math.nan  # unit 0, first image of every batch
            return x

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 16, 3, padding=1), nan=NaNUnit()))
    data = FakeConcepts(6, size=16, seed=3)
    expected = brute_force(model, data, ["nan"], 0.005, 0.04)
    result = dissect(model, data, "nan", batch_size=4, progress=False)
    assert torch.isnan(expected["nan"]["thresholds"][0])
    assert torch.isnan(result.layers["nan"].thresholds[0])
    assert torch.equal(result.layers["nan"].thresholds[1:], expected["nan"]["thresholds"][1:])
    assert result.layers["nan"].best_iou[0] == 0
    assert (result.layers["nan"].iou - expected["nan"]["iou"]).abs().max() <= 1e-6


def test_summary_json_and_top_units(data):
    result = dissect(small_cnn(), data, ["relu1", "conv3"], iou_threshold=0.05, progress=False)
    summary = result.summary()
    for key in ["relu1", "conv3"]:
        layer = result.layers[key]
        s = summary[key]
        assert s["units"] == layer.num_units
        assert s["detectors"] == int((layer.best_iou > 0.05).sum())
        assert s["unique_concepts"] == len({lab for lab, d in zip(layer.labels, layer.detectors) if d})
        assert list(s["families"])[: len(CONCEPT_FAMILIES)] == list(CONCEPT_FAMILIES)
        assert sum(f["detectors"] for f in s["families"].values()) == s["detectors"]
        assert sum(f["unique_concepts"] for f in s["families"].values()) == s["unique_concepts"]
    assert summary["relu1"]["detectors"] > 0

    back = Dissection.from_json(json.loads(json.dumps(result.to_json())))
    for key in result.layers:
        a, b = result.layers[key], back.layers[key]
        assert torch.equal(a.iou, b.iou) and torch.equal(a.thresholds, b.thresholds)
        assert a.labels == b.labels and torch.equal(a.detectors, b.detectors)
    assert back.concepts == result.concepts and back.image_size == (32, 32)

    top = result.top_units("relu1", 3)
    ious = [u["iou"] for u in top]
    assert ious == sorted(ious, reverse=True) and ious[0] == float(result.layers["relu1"].best_iou.max())
    assert top[0]["label"] == result.layers["relu1"].labels[top[0]["unit"]]
    with pytest.raises(ValueError, match="conv2"):
        result.top_units("conv2")


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    # A forked child must not enter the OpenMP pool the parent already started (it can hang).
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = dissect(small_cnn(), FakeConcepts(40, size=32, seed=1), ["relu1", "conv3"],
                         batch_size=6, progress=False)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result.to_json(), f)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_shards_merge_to_the_single_process_result(tmp_path, data):
    out = str(tmp_path / "dissection")
    # fork: the children reuse the imported modules instead of importing torch again
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    single = dissect(small_cnn(), data, ["relu1", "conv3"], batch_size=6, progress=False)
    for rank in range(2):
        with open(f"{out}.{rank}") as f:
            got = Dissection.from_json(json.load(f))
        for key in ["relu1", "conv3"]:
            assert torch.equal(got.layers[key].thresholds, single.layers[key].thresholds)
            assert torch.equal(got.layers[key].iou, single.layers[key].iou)
            assert got.layers[key].labels == single.layers[key].labels


def _short_shard_worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = zfnet(num_classes=10, width=0.125, image_size=64)
        # Each rank holds 4 images, fewer values than quantile=0.7 reads from the 8.
        short = dissect(model, ShapesDataset(8), ["conv1", "conv5"], quantile=0.7, progress=False)
        # One image for two ranks: rank 1's shard is empty.
        empty = dissect(model, ShapesDataset(1), ["conv1", "conv5"], progress=False)
        with open(f"{out}.{rank}", "w") as f:
            json.dump([short.to_json(), empty.to_json()], f)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_a_rank_holding_fewer_values_than_the_quantile_reads_or_none(tmp_path):
    out = str(tmp_path / "dissection")
    torch.manual_seed(0)
    model = zfnet(num_classes=10, width=0.125, image_size=64)
    mp.start_processes(_short_shard_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    single = [dissect(model, ShapesDataset(8), ["conv1", "conv5"], quantile=0.7, progress=False),
              dissect(model, ShapesDataset(1), ["conv1", "conv5"], progress=False)]
    for rank in range(2):
        with open(f"{out}.{rank}") as f:
            got = [Dissection.from_json(d) for d in json.load(f)]
        for g, s in zip(got, single):
            for key in ["conv1", "conv5"]:
                assert torch.equal(g.layers[key].thresholds, s.layers[key].thresholds)
                assert torch.equal(g.layers[key].iou, s.layers[key].iou)
                assert g.layers[key].labels == s.layers[key].labels


class _Explodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom")
        return x


def test_model_left_as_found_also_when_the_forward_raises(data):
    model = small_cnn()
    model.train()
    model.conv2.eval()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    dissect(model, data, ["relu1", "conv3"], batch_size=16, progress=False)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(not m._forward_hooks for m in model.modules())

    bomb = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 16, 3), boom=_Explodes(), relu=nn.ReLU()))
    bomb.train()
    with pytest.raises(RuntimeError, match="boom"):
        dissect(bomb, data, ["conv", "relu"], batch_size=16, progress=False)  # 3rd batch raises
    assert bomb.training and all(m.training for m in bomb.modules())
    assert all(not m._forward_hooks for m in bomb.modules())


class _BadMasks(FakeConcepts):
    def __init__(self, bad: str) -> None:
        super().__init__(5, size=16, seed=4)
        self.bad = bad

    def concept_masks(self, i: int) -> dict[str, torch.Tensor]:
        masks = super().concept_masks(i)
        if i == 3 and self.bad == "size":
            masks["color/red"] = torch.ones(16, 15, dtype=torch.bool)
        if i == 3 and self.bad == "name":
            masks["object/zebra"] = torch.ones(16, 16, dtype=torch.bool)
        return masks


class _Empty(FakeConcepts):
    def __len__(self) -> int:
        return 0


def test_bad_input_names_the_argument(data):
    model = small_cnn()
    with pytest.raises(ValueError, match=r"layers.*'conv22'.*did you mean.*conv2"):
        dissect(model, data, ["conv1", "conv22"], progress=False)
    with pytest.raises(ValueError, match="layers is empty"):
        dissect(model, data, [], progress=False)
    with pytest.raises(ValueError, match="layers names a layer twice"):
        dissect(model, data, ["conv1", model.conv1], progress=False)
    for q in [0, 1, -0.1, 1.5, math.nan, True, "0.1"]:
        with pytest.raises(ValueError, match=r"quantile must be a number in \(0, 1\)"):
            dissect(model, data, "conv1", quantile=q, progress=False)
    for t in [-0.01, 1.01, math.inf]:
        with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\]"):
            dissect(model, data, "conv1", iou_threshold=t, progress=False)
    for t in [0, 1]:  # the closed interval's ends are fine
        dissect(model, FakeConcepts(2, size=16), "conv1", iou_threshold=t, progress=False)
    with pytest.raises(ValueError, match=r"device='meta', but the model's parameters are on 'cpu'"):
        dissect(model, data, "conv1", device="meta", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        dissect(model, data, "conv1", batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"dataset \(TensorDataset\) must have a 'concepts' list and a 'concept_masks"):
        dissect(model, TensorDataset(torch.zeros(4, 3, 16, 16), torch.zeros(4)), "conv1", progress=False)
    with pytest.raises(ValueError, match="dataset is empty"):
        dissect(model, _Empty(3), "conv1", progress=False)
    with pytest.raises(ValueError, match=r"concept_masks\(3\)\['color/red'\] has shape \(16, 15\), but image 3 is 16x16"):
        dissect(model, _BadMasks("size"), "conv1", progress=False)
    with pytest.raises(ValueError, match=r"concept_masks\(3\) has concept 'object/zebra', which is not in dataset.concepts"):
        dissect(model, _BadMasks("name"), "conv1", progress=False)
