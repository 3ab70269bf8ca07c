import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from zflight.module import ImageClassifier


def _loader(n: int = 16, size: int = 64, classes: int = 10, crops: int | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    shape = (n, crops, 3, size, size) if crops else (n, 3, size, size)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**defaults, **kwargs})


def _small(**kwargs) -> ImageClassifier:
    return ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64, **kwargs)


def test_filter_renormalization_runs_after_every_optimizer_step(tmp_path):
    seed_everything(0)
    module = _small(filter_radius=0.1)
    with torch.no_grad():
        module.model.features.conv1.weight.mul_(50.0)  # rms 0.5, well over the radius
    _trainer(tmp_path, max_steps=1).fit(module, _loader())
    for m in module.model.modules():
        if isinstance(m, torch.nn.Conv2d):
            rms = m.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt()
            assert float(rms.max()) <= 0.1 + 1e-6


def test_filter_renormalization_can_be_turned_off(tmp_path):
    seed_everything(0)
    module = _small(filter_radius=None)
    with torch.no_grad():
        module.model.features.conv1.weight.mul_(50.0)
    _trainer(tmp_path, max_steps=1).fit(module, _loader())
    rms = module.model.features.conv1.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert float(rms.max()) > 0.1


def test_default_optimizer_is_the_papers_sgd():
    optimizer = _small().configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 1e-2 and optimizer.defaults["momentum"] == 0.9


def test_scheduler_is_returned_with_its_monitor():
    module = _small(
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max"),
        monitor="val/acc1",
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/acc1"


def test_validation_logs_micro_top1_and_top5(tmp_path):
    module = _small()
    trainer = _trainer(tmp_path)
    (metrics,) = trainer.validate(module, _loader(), verbose=False)
    assert set(metrics) == {"val/loss", "val/acc1", "val/acc5"}
    assert 0.0 <= metrics["val/acc1"] <= metrics["val/acc5"] <= 1.0


def test_ten_crop_test_batch_averages_softmax_over_crops():
    module = _small().eval()
    crops = torch.randn(2, 10, 3, 64, 64)
    with torch.no_grad():
        averaged = module.predict_probs(crops)
        by_hand = torch.stack([module(c).softmax(1).mean(0) for c in crops])
    torch.testing.assert_close(averaged, by_hand)


def test_test_step_accepts_ten_crop_batches(tmp_path):
    (metrics,) = _trainer(tmp_path).test(_small(), _loader(crops=10), verbose=False)
    assert set(metrics) == {"test/loss", "test/acc1", "test/acc5"}


def test_predict_probs_rejects_a_3d_batch():
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\].*got shape \(3, 64, 64\)"):
        _small().predict_probs(torch.zeros(3, 64, 64))


def test_bad_filter_radius_is_named():
    with pytest.raises(ValueError, match="filter_radius must be > 0"):
        _small(filter_radius=0.0)


def test_any_torchvision_model_trains_with_the_same_module(tmp_path):
    module = ImageClassifier(arch="resnet18", num_classes=10, image_size=64)
    _trainer(tmp_path, max_steps=1).fit(module, _loader())
    assert module.global_step == 1


def test_a_network_with_auxiliary_outputs_trains_on_its_main_logits(tmp_path):
    # GoogLeNet returns GoogLeNetOutputs(logits, aux_logits2, aux_logits1) in training mode.
    module = ImageClassifier(arch="googlenet", num_classes=10, model_args={"init_weights": False})
    module.train()
    assert module(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    _trainer(tmp_path, max_steps=1).fit(module, _loader())
    assert module.global_step == 1


@pytest.fixture(scope="module")
def pretrained_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(20)


def test_init_from_copies_every_weight_but_a_fresh_head_sized_for_the_classes(pretrained_ckpt):
    from zflight.checkpoint import load_classifier

    source = load_classifier(pretrained_ckpt).model
    module = ImageClassifier(arch="zfnet", num_classes=5, width=0.125, image_size=64, init_from=str(pretrained_ckpt))
    theirs, ours = source.state_dict(), module.model.state_dict()
    assert ours["classifier.fc8.weight"].shape == (5, 512)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("classifier.fc8."))


def test_init_from_another_architecture_names_the_weight_that_does_not_fit(pretrained_ckpt):
    with pytest.raises(ValueError, match=r"init_from: .* does not fit this model: features.conv1.weight is "
                                         r"\(12, 3, 7, 7\) there, \(24, 3, 7, 7\) here"):
        ImageClassifier(arch="zfnet", num_classes=5, width=0.25, image_size=64, init_from=str(pretrained_ckpt))


def test_freeze_through_fc7_trains_only_the_head_and_keeps_frozen_layers_in_eval(tmp_path, pretrained_ckpt):
    seed_everything(0)
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64,
                             init_from=str(pretrained_ckpt), freeze_through="fc7")
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with torch.no_grad():
        module.model.features.conv1.weight.mul_(50.0)  # over the renormalization radius: must stay so
        before["features.conv1.weight"].mul_(50.0)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.fc8.weight", "classifier.fc8.bias"]
    _trainer(tmp_path, max_steps=2).fit(module, _loader())
    after = module.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("classifier.fc8."))
    assert not torch.equal(after["classifier.fc8.weight"], before["classifier.fc8.weight"])
    module.train()
    assert not module.model.classifier.drop6.training and module.model.classifier.drop7.training


def test_freeze_through_the_head_is_refused():
    with pytest.raises(ValueError, match=r"freeze_through='fc8' freezes the head \(classifier.fc8\)"):
        _small(freeze_through="fc8")


# ------------------------------------------------------- starting from any model source (Table 4)
def test_pretrained_torchvision_weights_keep_all_but_a_fresh_head_sized_for_the_classes(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18()  # stands in for the ImageNet weights (no network here)
    torch.save(imagenet.state_dict(), cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    module = ImageClassifier(arch="resnet18", num_classes=5, weights="IMAGENET1K_V1", freeze_through="layer4")
    ours, theirs = module.model.state_dict(), imagenet.state_dict()
    assert ours["fc.weight"].shape == (5, 512)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("fc."))
    assert [n for n, p in module.model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_pretrained_weights_without_a_network_point_to_init_from(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError, match=r"^weights: cannot download ResNet18_Weights.IMAGENET1K_V1 .*"
                                         r"resnet18-f37072fd.pth: put it there, or give the weights file as "
                                         r"init_from$"):
        ImageClassifier(arch="resnet18", num_classes=5, weights="IMAGENET1K_V1")


def test_init_from_a_weights_file_of_a_torchvision_network(resnet18_file):
    module = ImageClassifier(arch="resnet18", num_classes=4, init_from=str(resnet18_file))
    theirs = torch.load(resnet18_file, weights_only=True)
    ours = module.model.state_dict()
    assert ours["fc.weight"].shape == (4, 512)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("fc."))


def test_a_timm_model_trains_with_its_head_sized_for_the_classes(tmp_path):
    pytest.importorskip("timm")
    module = ImageClassifier(arch="timm:test_resnet", num_classes=3, image_size=64)
    assert module(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    _trainer(tmp_path, max_steps=1).fit(module, _loader(classes=3))
    assert module.global_step == 1


def test_your_own_network_with_model_args_fine_tunes_from_its_weights_and_reloads_alone(tmp_path, own_network):
    from zflight.checkpoint import load_classifier

    pretrained = own_network.Net(channels=6)
    torch.save({"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()}}, tmp_path / "pre.ckpt")
    module = ImageClassifier(arch="mynets:Net", model_args={"channels": 6}, num_classes=3,
                             init_from=str(tmp_path / "pre.ckpt"), freeze_through="body", filter_radius=None)
    assert module.model.head.out_features == 3
    assert torch.equal(module.model.body[0].weight, pretrained.body[0].weight)  # the "model." prefix stripped
    trainer = _trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    trainer.fit(module, _loader(classes=3, size=16))
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    (tmp_path / "pre.ckpt").unlink()  # the fine-tuned checkpoint must not need its starting point
    reloaded = load_classifier(tmp_path / "tuned.ckpt").model
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), module.model.state_dict().values()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(arch="resnet18", weights="IMAGENET1K_V1", init_from="x.pt"),
         r"^init_from: give the starting weights once: weights='IMAGENET1K_V1' or init_from='x.pt', not both$"),
        (dict(arch="timm:resnet18x"), r"^arch: 'resnet18x' is not a timm model"),
        (dict(arch="no_such_package.nets:Net"), r"^arch: cannot import no_such_package.nets"),
        (dict(arch="resnet18", model_args={"depth": 3}), r"^model_args: resnet18\(\) got an unexpected keyword"),
        (dict(arch="zfnet", model_args={"depth": 3}), r"^model_args: zflight's zfnet takes width"),
        (dict(arch="resnet18", init_from="missing.pt"), r"^init_from: no such file: missing.pt$"),
    ],
)
def test_bad_model_sources_are_one_line_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(num_classes=3, **kwargs)


def test_init_from_another_networks_weights_names_the_weight(resnet18_file):
    with pytest.raises(ValueError, match=r"^init_from: .*resnet18.pt does not fit this model: layer1.2.conv1.weight "
                                         r"is missing there, \(64, 64, 3, 3\) here$"):
        ImageClassifier(arch="resnet34", num_classes=4, init_from=str(resnet18_file))
