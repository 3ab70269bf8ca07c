"""python -m zflight layers: every module with its type and output shape; the model options' errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

from zflight.cli import main


def test_layers_lists_modules_with_output_shapes_and_marks_the_defaults(capsys):
    rows = main(["layers", "--model", "resnet18", "--image_size", "64"])
    out = capsys.readouterr().out
    assert "* layer4" in out and "512x2x2" in out and "default layers: relu layer1 layer2 layer3 layer4" in out
    assert {"name": "layer1.0.conv1", "type": "Conv2d", "output": "64x16x16", "parameters": 36864,
            "default": False} in rows


def test_layers_reads_a_checkpoint_given_with_the_model(tmp_path, capsys):
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "sd.pt")
    main(["layers", "--model", "resnet18", "--model_args", '{"num_classes": 3}', "--checkpoint",
          str(tmp_path / "sd.pt"), "--image_size", "32"])
    assert f"file {tmp_path / 'sd.pt'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnt18"], "--model: 'resnt18' is not a torchvision classification model; did you mean resnet18"),
        (["--model", "resnet18", "--ckpt_path", "x.ckpt"], "argument --ckpt_path: not allowed with argument --model"),
        ([], "one of the arguments --ckpt_path --model is required"),
        (["--model", "resnet18", "--model_args", '{"num_clases": 3}'],
         "--model_args: resnet18() got an unexpected keyword argument 'num_clases'"),
        (["--model", "no_such_package.nets:Net"], "--model: cannot import no_such_package.nets (ModuleNotFoundError"),
        (["--model", "resnet18", "--weights", "IMAGENET9K"], "--weights: resnet18 has no weights 'IMAGENET9K'"),
    ],
)
def test_bad_model_options_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["layers", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert message in err


@pytest.mark.parametrize("content", [b"hello", b"this is not a checkpoint", b""])
def test_files_that_are_not_checkpoints_are_one_line_for_both_options(tmp_path, content, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    for option in (["--ckpt_path", str(bad)], ["--model", "resnet18", "--checkpoint", str(bad)]):
        with pytest.raises(SystemExit):
            main(["layers", *option])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and option[-2] in err, err


def test_weights_of_another_architecture_are_one_line_with_missing_and_unexpected_keys(tmp_path, capsys):
    torch.save(torchvision.models.squeezenet1_0().state_dict(), tmp_path / "squeeze.pt")
    with pytest.raises(SystemExit):
        main(["layers", "--model", "resnet18", "--checkpoint", str(tmp_path / "squeeze.pt")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--checkpoint: " in err and "does not fit ResNet" in err
    assert "missing keys (conv1.weight, bn1.weight, bn1.bias, ...)" in err and "unexpected keys (features.0.weight" in err
