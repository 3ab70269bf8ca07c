import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zflight.cli import main as _main


def main(args: list[str]):
    # LightningCLI warns when it is given args while sys.argv holds pytest's own arguments.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["zflight"])
        return _main(args)


ROOT = Path(__file__).resolve().parents[2]


QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    """The quickstart config, shrunk to seconds, logging into tmp_path."""
    return [
        "--config", QUICKSTART,
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--model.width=0.125",
        "--data.init_args.train_size=48",
        "--data.init_args.val_size=16",
        "--data.init_args.test_size=16",
        "--data.init_args.batch_size=16",
        *extra,
    ]


def _run_dir(tmp_path: Path) -> Path:
    (run,) = sorted((tmp_path / "runs" / "quickstart").glob("version_*"))
    return run


def test_fit_writes_last_checkpoint_and_tensorboard_scalars_and_says_where(tmp_path, capsys):
    main(["fit", *_tiny(tmp_path)])
    run = _run_dir(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = capsys.readouterr().out
    assert f"checkpoints: {run / 'checkpoints'}" in out
    assert f"TensorBoard logs: {run}" in out
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/loss", "val/acc1", "val/acc5", "val/loss"} <= set(events.Tags()["scalars"])


def test_checkpoint_loads_with_weights_only(tmp_path):
    main(["fit", *_tiny(tmp_path)])
    ckpt = torch.load(_run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["arch"] == "zfnet"
    assert ckpt["hyper_parameters"]["num_classes"] == 10


def test_ckpt_path_last_resumes_the_same_run(tmp_path, monkeypatch):
    main(["fit", *_tiny(tmp_path)])
    last = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    main(["fit", *_tiny(tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last")])
    monkeypatch.undo()
    assert loads and all(flag is True for flag in loads)  # resumed without unpickling code
    run = _run_dir(tmp_path)  # still one version folder: the resumed run continued it
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # 48 images at batch 16: 3 steps per epoch; the second run added exactly one epoch
    assert first["global_step"] == 3 and resumed["global_step"] == 6
    events = EventAccumulator(str(run))
    events.Reload()
    assert len(events.Scalars("val/acc1")) == 2  # both epochs' validation in the same run


def test_print_config_shows_resolved_quickstart(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "arch: zfnet" in out and "class_path: zflight.data.ShapesDataModule" in out


def test_wrong_config_key_fails_with_one_message_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_tiny(tmp_path, "--model.widht=0.5")])
    assert exit_info.value.code == 2
    assert "widht" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, named, close",
    [
        (["--trainer.max_epocs", "1"], "--trainer.max_epocs", "--trainer.max_epochs"),
        # argparse's prefix matching would take this for --trainer.max_epochs and start a run
        (["--trainer.max_epoch", "1"], "--trainer.max_epoch", "--trainer.max_epochs"),
        (["--model.widht", "0.5"], "--model.widht", "--model.width"),
    ],
)
def test_wrong_or_abbreviated_option_is_a_short_error_with_its_close_match(extra, named, close, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 5, err
    assert err[0].startswith("python -m zflight fit: error:") and named in err[0]
    assert any(f"did you mean {close}?" in line for line in err)


def test_wrong_key_in_a_config_file_is_a_short_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epocs: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 5 and "trainer.max_epocs" in err[0]
    assert any("--trainer.max_epochs" in line for line in err)


def test_a_value_of_the_wrong_type_is_a_short_error_naming_key_and_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--trainer.max_epochs", "ten"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 5 and "trainer.max_epochs" in err[0] and "ten" in err[0]


def _not_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    from zflight.module import ImageClassifier

    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes\n")
    good = tmp_path / "good.ckpt"
    module = ImageClassifier(arch="zfnet", num_classes=10, width=0.125, image_size=64)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(3, 3)}}, other)
    return {
        "text": (text, "is not a torch checkpoint file"),
        "truncated": (truncated, "is truncated or corrupt"),
        "other model": (other, "is a checkpoint of another model"),
    }


@pytest.mark.parametrize("kind", ["text", "truncated", "other model"])
def test_a_file_that_is_no_checkpoint_of_the_model_is_one_line_naming_it(kind, tmp_path, capsys):
    path, reason = _not_checkpoints(tmp_path)[kind]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_tiny(tmp_path, f"--ckpt_path={path}")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"python -m zflight fit: error: --ckpt_path: {path} {reason}")
    assert len(err) <= 2 and "weights_only" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()  # no run was started


def test_missing_data_folder_fails_with_one_message_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-imagenet"
    config = str(ROOT / "configs" / "zfnet_imagenet.yaml")
    args = ["fit", "--config", config, f"--data.init_args.root={missing}", "--trainer.accelerator=cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_fit_with_two_ddp_processes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, "-m", "zflight", "fit", *_tiny(tmp_path),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _run_dir(tmp_path)  # one logging folder, written by rank 0 only
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert proc.stdout.count("TensorBoard logs:") == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # 48 training images over 2 ranks at batch 16: 2 steps per epoch per rank
    assert ckpt["global_step"] == 2


def test_a_callback_layer_the_network_lacks_is_one_error_line_before_training(tmp_path, capsys):
    bad = tmp_path / "bad_layer.yaml"
    bad.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: zflight.callbacks.FeatureEvolution\n"
        "      init_args: {layers: [conv1, conv6], epochs: [10]}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_tiny(tmp_path, "--config", str(bad))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("python -m zflight fit: error: FeatureEvolution: layer='conv6' is not a module of ZFNet")
    assert len(err) <= 3, err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing trained
    assert not list((tmp_path / "runs").rglob("version_*"))  # and no empty run left for TensorBoard


def test_fit_fine_tunes_your_own_network_from_its_weights_file(tmp_path, own_network):
    # --model.arch package.module:attr with --model.model_args as JSON, --model.init_from a
    # weights file made for 1,000 classes: the head is resized to the data's 10, the body frozen.
    torch.manual_seed(0)
    pretrained = own_network.Net(channels=6)
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    main(["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs=1", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--checkpoint.dirpath", str(tmp_path / "ckpts"),
          "--model.arch=mynets:Net", '--model.model_args={"channels": 6}', "--model.filter_radius=null",
          f"--model.init_from={tmp_path / 'pretrained.pt'}", "--model.freeze_through=body",
          "--data.init_args.train_size=32", "--data.init_args.val_size=16", "--data.init_args.image_size=32",
          "--data.init_args.batch_size=16"])
    state = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["model.head.weight"].shape == (10, 6)
    assert torch.equal(state["model.body.0.weight"], pretrained.body[0].weight)  # frozen: as loaded
