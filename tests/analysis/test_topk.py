"""top_activations: equals a brute-force loop exactly, ties, shards under DDP, crops."""

from __future__ import annotations


import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from zflight import zfnet
from zflight.analysis import TopActivations, top_activation_crops, top_activations
from zflight.attribution import forward_to, resolve_layer
from zflight.data import ShapesDataset


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")


@pytest.fixture(scope="module")
def dataset() -> ShapesDataset:
    return ShapesDataset(37, image_size=64, seed=3)


def brute_force(model, layer, dataset, k, channels=None):
    """One image at a time: its strongest activation per map, sorted by (-value, index)."""
    _, module = resolve_layer(model, layer)
    per_image = []
    with torch.no_grad():
        was = model.training
        model.eval()
        for i in range(len(dataset)):
            out = forward_to(model, module, dataset[i][0][None])[0]
            per_image.append(out)
        model.train(was)
    acts = torch.stack(per_image)  # [N, C, H, W]
    chans = list(range(acts.shape[1])) if channels is None else list(channels)
    w = acts.shape[3]
    values, indices, positions = [], [], []
    for c in chans:
        rows = []
        for i in range(len(dataset)):
            flat = acts[i, c].flatten()
            p = int(flat.argmax())
            rows.append((-float(flat[p]), i, (p // w, p % w)))
        rows.sort(key=lambda r: (r[0], r[1]))
        rows = rows[:k]
        values.append([-r[0] for r in rows])
        indices.append([r[1] for r in rows])
        positions.append([r[2] for r in rows])
    return torch.tensor(values), torch.tensor(indices), torch.tensor(positions)


@pytest.mark.parametrize("layer, channels", [("conv2", None), ("pool5", [7, 0, 3])])
def test_equals_a_brute_force_loop(model, dataset, layer, channels):
    top = top_activations(model, dataset, layer, k=9, channels=channels, batch_size=8, progress=False)
    values, indices, positions = brute_force(model, layer, dataset, 9, channels)
    assert isinstance(top, TopActivations)
    assert torch.equal(top.indices, indices)
    assert torch.equal(top.positions, positions)
    torch.testing.assert_close(top.values, values, rtol=1e-5, atol=1e-6)
    assert (top.values[:, :-1] >= top.values[:, 1:]).all(), "values must be descending"
    # one entry per image per map
    assert all(len(set(row.tolist())) == top.k for row in top.indices)


def test_several_layers_in_one_pass_equal_one_layer_at_a_time(model, dataset):
    tops = top_activations(model, dataset, ["conv4", "conv1"], k=3, channels={"conv4": [2, 5], "conv1": None},
                           batch_size=16, progress=False)
    assert list(tops) == ["conv4", "conv1"]
    for name, chans in [("conv4", [2, 5]), ("conv1", None)]:
        alone = top_activations(model, dataset, name, k=3, channels=chans, batch_size=16, progress=False)
        assert torch.equal(tops[name].indices, alone.indices)
        assert torch.equal(tops[name].positions, alone.positions)
        assert torch.equal(tops[name].values, alone.values)
    with pytest.raises(ValueError, match="channels has no entry"):
        top_activations(model, dataset, ["conv4", "conv1"], channels={"conv4": [1]}, progress=False)


def test_ties_go_to_the_lower_index_and_first_position():
    # Integer weights and inputs make the activations exact, so equal images tie exactly.
    conv = nn.Conv2d(1, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0], [0, 0]]], [[[0.0, 0], [0, 0]]]]))
    model = nn.Sequential(conv)
    x = torch.zeros(10, 1, 4, 4)
    x[[2, 5, 7], 0, 1, 1] = 3.0  # three equal maxima for map 0
    x[9, 0, 0, 0] = 1.0
    top = top_activations(model, TensorDataset(x, torch.zeros(10)), "0", k=4, batch_size=3, progress=False)
    assert top.indices[0].tolist() == [2, 5, 7, 9]
    assert top.positions[0, 0].tolist() == [1, 1]
    # map 1 is all zero: every image ties at position (0, 0), lowest indices win
    assert top.indices[1].tolist() == [0, 1, 2, 3]
    assert top.positions[1].tolist() == [[0, 0]] * 4


def test_float64_model_keeps_its_own_precision_against_a_brute_force_scan():
    # Activations that differ by 1e-12 (below float32's resolution near 1) rank correctly only
    # in the model's own float64: the reported value and position are exactly the maximum's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1)).double()
    base = torch.rand(12, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, 0, 1, 1] = 1.0  # each map is its input plus a bias
        model[0].bias.zero_()
    x = base.clone()
    x[:, 0, 2, 3] = 1.0
    x[:, 0, 4, 1] = 1.0 + 1e-12 * torch.arange(1, 13, dtype=torch.float64)  # close rivals
    top = top_activations(model, TensorDataset(x, torch.zeros(12)), "0", k=5, batch_size=5, progress=False)
    acts = model(x).detach()  # brute force: every activation in float64
    assert top.values.dtype == torch.float64
    for c in range(3):
        flat = acts[:, c].flatten(1)
        best_v, best_pos = flat.max(dim=1)
        order = sorted(range(12), key=lambda n: (-best_v[n].item(), n))[:5]
        assert top.indices[c].tolist() == order
        for j, n in enumerate(order):
            r, q = top.positions[c, j].tolist()
            assert top.values[c, j].item() == acts[n, c, r, q].item() == best_v[n].item()
            assert (r, q) == (4, 1)


def test_k_larger_than_the_dataset_gives_every_image(model):
    ds = ShapesDataset(5, image_size=64, seed=1)
    top = top_activations(model, ds, "conv1", k=9, channels=[0, 1], progress=False)
    assert top.values.shape == (2, 5)
    assert sorted(top.indices[0].tolist()) == [0, 1, 2, 3, 4]


def test_model_modes_are_restored_and_no_grad_is_kept(model, dataset):
    model.train()
    top_activations(model, dataset, "conv1", k=2, channels=[0], progress=False)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_name_themselves(model, dataset):
    with pytest.raises(ValueError, match="k must"):
        top_activations(model, dataset, "conv1", k=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        top_activations(model, dataset, "conv1", batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"channels \[99\].*conv1"):
        top_activations(model, dataset, "conv1", channels=[0, 99], progress=False)
    with pytest.raises(ValueError, match="repeat"):
        top_activations(model, dataset, "conv1", channels=[1, 1], progress=False)
    with pytest.raises(ValueError, match="conv9"):
        top_activations(model, dataset, "conv9", progress=False)


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    # A forked child must not enter the OpenMP pool the parent already started (it can hang);
    # one thread each keeps torch off it.
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")
        ds = ShapesDataset(37, image_size=64, seed=3)
        top = top_activations(model, ds, "conv3", k=9, batch_size=8, progress=False)
        torch.save(top.__dict__, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_mine_shards_and_all_get_the_single_process_result(tmp_path, model, dataset):
    out = str(tmp_path / "top")
    # fork: the children reuse the imported modules instead of importing torch again
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    single = top_activations(model, dataset, "conv3", k=9, batch_size=8, progress=False)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert torch.equal(got["indices"], single.indices)
        assert torch.equal(got["positions"], single.positions)
        torch.testing.assert_close(got["values"], single.values)


def _crops_worker(rank: int, world: int, store: str, out: str) -> None:
    from zflight.attribution.deconvnet import DeconvNet

    torch.set_num_threads(1)  # a forked child must stay out of the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    projected = []
    original = DeconvNet.project

    def counting(self, inputs, *args, **kwargs):
        projected.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    DeconvNet.project = counting
    try:
        torch.manual_seed(0)
        model = zfnet(num_classes=10, width=0.125, image_size=64, init="kaiming")
        ds = ShapesDataset(37, image_size=64, seed=3)
        top = top_activations(model, ds, "conv3", k=9, channels=[0, 1, 2], batch_size=8, progress=False)
        proj, patches = top_activation_crops(model, ds, top, tile=16, batch_size=8, shard=True)
        torch.save({"proj": proj, "patches": patches, "projected": projected}, f"{out}.{rank}")
    finally:
        DeconvNet.project = original
        torch.distributed.destroy_process_group()


def test_sharded_crops_split_the_batches_and_all_ranks_get_one_processs_tiles(tmp_path, model, dataset):
    out = str(tmp_path / "crops")
    mp.start_processes(_crops_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    top = top_activations(model, dataset, "conv3", k=9, channels=[0, 1, 2], batch_size=8, progress=False)
    proj, patches = top_activation_crops(model, dataset, top, tile=16, batch_size=8, shard=True)  # no group
    got = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    # 27 images in batches of 8: rank 0 projects batches 0 and 2 (8 + 8), rank 1 batches 1 and 3 (8 + 3)
    assert [g["projected"] for g in got] == [[8, 8], [8, 3]]
    for g in got:
        assert torch.equal(g["proj"], proj) and torch.equal(g["patches"], patches)


def test_crops_are_projections_and_patches_of_the_same_box(model, dataset):
    top = top_activations(model, dataset, "conv2", k=4, channels=[1, 2], progress=False)
    proj, patches = top_activation_crops(model, dataset, top, tile=32)
    assert proj.shape == patches.shape == (2, 4, 3, 32, 32)
    assert patches.min() >= 0 and patches.max() <= 1
    assert proj.abs().sum() > 0
