"""zflight.sources: naming a model (zflight, torchvision, timm, your own code, a weights file) and images."""

from __future__ import annotations

import json
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from zflight.data.datamodules import UnreadableImageError
from zflight.sources import (
    Preprocess,
    class_targets,
    default_layers,
    image_files,
    image_folder,
    load_model,
    load_weights,
    parse_model_args,
    read_weights,
)

SMALL = {"crop": 64, "resize": 64}


def _resnet18_file(tmp_path, wrap=None, name="sd.pt", seed=1):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    state = model.state_dict()
    path = tmp_path / name
    torch.save(wrap(state) if wrap else state, path)
    return model, path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------ weights files
def test_torchvision_model_loads_a_plain_state_dict(tmp_path):
    model, path = _resnet18_file(tmp_path)
    source = load_model("resnet18", checkpoint=path, preprocess=SMALL)
    assert _same_weights(source.model, model)
    assert source.weights == f"file {path}" and source.kind == "torchvision"
    assert not source.model.training


def test_state_dict_under_a_state_dict_key_loads(tmp_path):
    torch.manual_seed(2)
    model = torchvision.models.mobilenet_v3_small()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "m.pt")
    source = load_model("mobilenet_v3_small", checkpoint=tmp_path / "m.pt", preprocess=SMALL)
    assert _same_weights(source.model, model)


def test_lightning_checkpoint_prefix_is_stripped(tmp_path):
    model, _ = _resnet18_file(tmp_path)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["train_acc.total"] = torch.tensor(3)  # a metric's state beside the network
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 0.1}}, tmp_path / "last.ckpt")
    source = load_model("resnet18", checkpoint=tmp_path / "last.ckpt", preprocess=SMALL)
    assert _same_weights(source.model, model)


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    model, _ = _resnet18_file(tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    source = load_model("resnet18", checkpoint=tmp_path / "w.safetensors", preprocess=SMALL)
    assert _same_weights(source.model, model)


def test_checkpoint_of_another_architecture_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"checkpoint: .*other.pt does not fit ResNet: \d+ missing keys \(conv1.weight, "
                                         r"bn1.weight, bn1.bias, \.\.\.\); \d+ unexpected keys \(features"):
        load_model("resnet18", checkpoint=tmp_path / "other.pt")


def test_checkpoint_with_other_shapes_names_the_first_one(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(ValueError, match=r"fc.weight is \(10, 512\) in the file, \(1000, 512\) in the model"):
        load_model("resnet18", checkpoint=tmp_path / "ten.pt")


def _not_checkpoints(tmp_path):
    (tmp_path / "hello.txt").write_text("hello")
    (tmp_path / "words.txt").write_text("this is not a checkpoint")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(600))
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("notes.txt", "not torch")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    return ["hello.txt", "words.txt", "random.bin", "empty.pt", "other.zip", "truncated.pt"]


def test_any_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path):
    for name in _not_checkpoints(tmp_path):
        with pytest.raises(ValueError) as err:
            read_weights(tmp_path / name)
        message = str(err.value)
        assert message.startswith("checkpoint: ") and name in message and "\n" not in message, message


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file: .*nope.pt"):
        read_weights(tmp_path / "nope.pt")


def test_load_weights_leaves_the_model_untouched_on_a_bad_file(tmp_path):
    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match="unexpected keys"):
        load_weights(model, tmp_path / "r34.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------- model names
def test_unknown_torchvision_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"model: 'resnet19' is not a torchvision classification model; did you "
                                         r"mean resnet18"):
        load_model("resnet19")


def test_model_args_reach_the_builder_and_a_wrong_keyword_is_named():
    assert load_model("resnet18", model_args='{"num_classes": 7}', preprocess=SMALL).num_outputs == 7
    with pytest.raises(ValueError, match=r"model_args: resnet18\(\) got an unexpected keyword argument 'num_clases'"):
        load_model("resnet18", model_args={"num_clases": 7})
    with pytest.raises(ValueError, match="model_args: not JSON"):
        parse_model_args("{num_classes: 7}")
    with pytest.raises(ValueError, match="model_args: must be a JSON object"):
        parse_model_args("[1, 2]")


def test_exactly_one_of_model_and_ckpt_path():
    with pytest.raises(ValueError, match="exactly one"):
        load_model()
    with pytest.raises(ValueError, match="exactly one"):
        load_model("resnet18", ckpt_path="x.ckpt")


NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int = 4, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        f = self.body(x)
        return self.head(f.mean((2, 3)))

class TupleNet(Net):
    def forward(self, x):
        return (super().forward(x), "aux")

class DictNet(Net):
    def forward(self, x):
        return {"hidden": x.mean(), "logits": super().forward(x)}

def build(width=4):
    return Net(width=width)
"""


def test_own_code_is_imported_from_the_current_folder_with_model_args(user_code):
    user_code("mynets.tiny", NET)
    source = load_model("mynets.tiny:Net", model_args={"width": 6, "classes": 5}, preprocess=SMALL)
    assert source.kind == "import" and source.num_outputs == 5
    assert source.model.body[0].out_channels == 6
    assert source.default_layers == ["body.1", "body.4"]
    assert load_model("mynets.tiny:build", preprocess=SMALL).model.body[0].out_channels == 4


def test_own_code_that_fails_to_import_shows_the_import_error(user_code):
    user_code("mynets.tiny", "import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="model: cannot import mynets.tiny .*No module named 'not_a_module_anywhere'"):
        load_model("mynets.tiny:Net")


def test_own_code_wrong_keyword_and_missing_attribute(user_code):
    user_code("mynets.tiny", NET)
    with pytest.raises(ValueError, match=r"model_args: mynets.tiny:Net\(\) got an unexpected keyword argument 'depth'"):
        load_model("mynets.tiny:Net", model_args={"depth": 3})
    with pytest.raises(ValueError, match="model: mynets.tiny has no attribute 'Nett'; did you mean Net"):
        load_model("mynets.tiny:Nett")


def test_tuple_and_dict_outputs_are_read_through_their_first_tensor_or_logits(user_code):
    user_code("mynets.tiny", NET)
    torch.manual_seed(0)
    plain = load_model("mynets.tiny:Net", preprocess=SMALL).model
    x = torch.randn(2, 3, 64, 64)
    for attr, note in (("TupleNet", "first tensor (item 0)"), ("DictNet", "'logits'")):
        source = load_model(f"mynets.tiny:{attr}", preprocess=SMALL)
        source.model.load_state_dict(plain.state_dict())  # module names and keys unchanged
        assert torch.equal(source.model(x), plain(x))
        assert note in source.facts()["output"]
        assert type(source.model).__name__ == attr and isinstance(source.model, nn.Module)


# -------------------------------------------------------------------------------- the weights API
def test_weights_without_network_is_one_line_naming_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError) as err:
        load_model("resnet18", weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and message.startswith("weights: cannot download ResNet18_Weights.IMAGENET1K_V1")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--checkpoint" in message


def test_weights_in_torchvisions_cache_give_preprocessing_and_class_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    model, _ = _resnet18_file(tmp_path)
    torch.save(model.state_dict(), cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    source = load_model("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    assert _same_weights(source.model, model)
    assert (source.preprocess.resize, source.preprocess.crop) == (256, 224)
    assert len(source.classes) == 1000 and source.classes[0] == "tench"
    assert "meta['categories']" in source.classes_from
    with pytest.raises(ValueError, match="weights: resnet18 has no weights 'IMAGENET9K'; choose from DEFAULT, IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="are not resnet18's weights"):
        load_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V1")


# ----------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_timm_models_load_without_pretrained_weights(name):
    pytest.importorskip("timm")
    source = load_model(f"timm:{name}", preprocess=SMALL)
    assert source.kind == "timm" and source.num_outputs == 1000 and source.is_classifier
    assert source.weights == "random (pretrained=False)"
    assert type(source.model).__module__.startswith("timm.")
    assert source.default_layers[-1] in ("layer4", "stages.3")


def test_unknown_timm_name_suggests_close_names():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="model: 'resnet_18' is not a timm model; did you mean timm:resnet18"):
        load_model("timm:resnet_18")


# --------------------------------------------------------------------------------------- layers
def test_default_layers_are_each_resolution_stages_output():
    assert default_layers(torchvision.models.resnet18(), 64) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    # VGG's shape: the last ReLU before each pool (torchvision's own vgg builder, small widths).
    features = torchvision.models.vgg.make_layers([8, "M", 8, 8, "M", 16, "M"])
    vgg = nn.Sequential()
    vgg.add_module("features", features)
    vgg.add_module("avgpool", nn.AdaptiveAvgPool2d(2))
    assert default_layers(vgg, 32) == ["features.1", "features.6", "features.9"]


def test_zflight_networks_default_to_the_papers_five_layers(user_code):
    user_code("mynets.tiny", "from zflight import zfnet\n\ndef net():\n"
                "    return zfnet(num_classes=4, width=0.125, image_size=64)\n")
    source = load_model("mynets.tiny:net", preprocess={"crop": 64, "resize": 64})
    assert source.default_layers == ["conv1", "conv2", "conv3", "conv4", "conv5"]


# --------------------------------------------------------------------------------------- images
def _write_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def test_folder_with_class_subfolders_has_labels_and_class_names(tmp_path):
    _write_images(tmp_path / "photos" / "dog", ["a.png", "b.jpg"])
    _write_images(tmp_path / "photos" / "cat", ["c.jpeg"])
    ds = image_folder(tmp_path / "photos", Preprocess(36, 32))
    assert ds.classes == ["cat", "dog"] and ds.labels == [0, 1, 1]
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and label == 1
    assert ds.name(0) == "cat/c.jpeg"


def test_flat_folder_has_no_labels(tmp_path):
    _write_images(tmp_path / "flat", ["x.png", "y.webp", "z.bmp"])
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    ds = image_folder(tmp_path / "flat", Preprocess(32, 32))
    assert len(ds) == 3 and ds.classes is None and not ds.labelled and ds[0][1] == -1


def test_preprocessing_is_resize_centre_crop_and_normalize(tmp_path):
    _write_images(tmp_path / "one", ["a.png"], size=(80, 40))
    pre = Preprocess(20, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = image_folder(tmp_path / "one", pre)[0][0]
    img = Image.open(tmp_path / "one" / "a.png").convert("RGB").resize((40, 20), Image.BILINEAR)
    expected = torchvision.transforms.functional.center_crop(torchvision.transforms.functional.to_tensor(img), [16, 16])
    assert torch.allclose(pre.denormalize(x), expected.clamp(0, 1), atol=0.02)
    assert x.shape == (3, 16, 16)


def test_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="images: .*empty holds no image files"):
        image_folder(tmp_path / "empty", Preprocess(32, 32))
    with pytest.raises(FileNotFoundError, match="images: no such folder"):
        image_folder(tmp_path / "nowhere", Preprocess(32, 32))


def test_corrupt_image_names_the_file_when_read(tmp_path):
    _write_images(tmp_path / "bad", ["good.png"])
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = image_folder(tmp_path / "bad", Preprocess(32, 32))
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        ds[0]


def test_image_files_take_files_or_one_folder(tmp_path):
    _write_images(tmp_path / "f", ["a.png", "b.png"])
    assert len(image_files([tmp_path / "f" / "a.png"], Preprocess(32, 32))) == 1
    assert len(image_files([tmp_path / "f"], Preprocess(32, 32))) == 2
    with pytest.raises(FileNotFoundError, match="no such file: .*c.png"):
        image_files([tmp_path / "f" / "c.png"], Preprocess(32, 32))


def test_preprocess_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"image_size \(300\) must be <= resize \(256\)"):
        Preprocess(256, 300)
    with pytest.raises(ValueError, match="mean needs 3 values"):
        Preprocess(32, 32, mean=(0.5,))


def test_folder_labels_index_the_model_classes_only_by_name(tmp_path):
    _write_images(tmp_path / "p" / "tench", ["a.png"])
    _write_images(tmp_path / "p" / "goldfish", ["b.png"])
    ds = image_folder(tmp_path / "p", Preprocess(32, 32))
    source = load_model("resnet18", preprocess=SMALL)
    assert class_targets(ds, source)[0] is None and "predicted class is used" in class_targets(ds, source)[1]
    source.classes = ["tench", "goldfish", "shark"] + [str(i) for i in range(997)]
    assert class_targets(ds, source) == ([1, 0], "")


def test_classes_file_names_the_outputs(tmp_path):
    (tmp_path / "names.txt").write_text("\n".join(f"c{i}" for i in range(7)) + "\n")
    source = load_model("resnet18", model_args={"num_classes": 7}, classes=tmp_path / "names.txt", preprocess=SMALL)
    assert source.classes[3] == "c3" and "names.txt" in source.classes_from
    with pytest.raises(ValueError, match="classes: 7 names for a model with 1000 outputs"):
        load_model("resnet18", classes=tmp_path / "names.txt", preprocess=SMALL)


def test_facts_name_source_weights_preprocessing_and_classes(tmp_path):
    facts = load_model("resnet18", preprocess=SMALL).facts()
    assert facts["model"] == "torchvision resnet18" and facts["weights"] == "random (weights=None)"
    assert facts["preprocessing"].startswith("shorter side 64, centre crop 64")
    assert json.dumps(facts)


def test_zflight_checkpoint_of_a_folder_that_is_gone_keeps_its_preprocessing(tmp_path):
    from zflight.module import ImageClassifier
    from zflight.sources import default_dataset

    module = ImageClassifier(arch="zfnet", num_classes=4, width=0.125, image_size=64)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"_class_path": "zflight.data.ImageFolderDataModule",
                                                "root": str(tmp_path / "gone"), "resize": 72, "crop_size": 64,
                                                "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}},
               tmp_path / "in.ckpt")
    source = load_model(ckpt_path=tmp_path / "in.ckpt")
    assert (source.preprocess.resize, source.preprocess.crop, source.preprocess.mean) == (72, 64, (0.5, 0.5, 0.5))
    assert source.default_layers == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    with pytest.raises(ValueError, match=r"images: the checkpoint's data \(.*gone\) cannot be read on this machine"):
        default_dataset(source)
