"""A ``python -m zflight fit`` killed with SIGKILL and resumed with ``--ckpt_path last`` ends as
an uninterrupted run does: same weights, same metrics, byte-identical figures (docs/resume.md)."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    """``benchmarks/<name>.py`` as a module: the test and the script share its run-reading helpers."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


resume_check = _load_script("resume_check")
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

# 96 images at batch 16: 6 steps per epoch, 18 in all; a checkpoint every 3 steps, so step 9 is
# the middle of the second epoch and the last one (step 18) holds the final weights.
STEPS_PER_EPOCH, EPOCHS, EVERY = 6, 3, 3
KILL_AFTER = 9
# The figures: the quickstart's evolution figure, smaller (three layers, 4 maps, 32 probe images,
# a column every epoch), and the first layer's filters.
FIGURES_YAML = """
trainer:
  callbacks:
    - class_path: zflight.callbacks.FeatureEvolution
      init_args: {layers: [conv1, conv2, conv5], maps: 4, probe_size: 32, epochs: [1, 2, 3]}
    - class_path: zflight.callbacks.FilterGrid
"""
FIGURES = ("--config", "figures.yaml")


def _command(save_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "zflight", "fit",
        "--config", QUICKSTART,
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.deterministic=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--model.width=0.125",
        f"--model.lr_scheduler.init_args.T_max={EPOCHS}",
        "--data.init_args.train_size=96",
        "--data.init_args.val_size=32",
        "--data.init_args.test_size=16",
        "--data.init_args.batch_size=16",
        # Every few steps, mid-epoch included, each file kept (a kill finds one to resume from).
        f"--checkpoint.every_n_train_steps={EVERY}",
        "--checkpoint.monitor=null",
        "--checkpoint.save_top_k=-1",
        "--checkpoint.filename=step{step:03d}",
        *extra,
    ]


def _env() -> dict[str, str]:
    # One thread: the suite's machine is small and busy (see tests/conftest.py). Without what
    # earlier in-process tests leave in the environment (Lightning's seed, DDP variables).
    leftovers = ("PL_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leftovers)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _kill_after_checkpoint(cmd: list[str], cwd: Path, checkpoint: Path, timeout: float = 240) -> None:
    """Start ``cmd``; SIGKILL it as soon as ``checkpoint`` and the ``last.ckpt`` after it exist."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not resume_check.saved(checkpoint):
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before {checkpoint.name}: {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {checkpoint} after {timeout} s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_resumed_from_last_ends_as_an_uninterrupted_run(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    # The uninterrupted run, alongside the run to be killed (two cores).
    (tmp_path / "figures.yaml").write_text(FIGURES_YAML)
    whole = subprocess.Popen(_command(straight, *FIGURES), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    marker = broken / "quickstart" / "version_0" / "checkpoints" / f"step{KILL_AFTER:03d}.ckpt"
    _kill_after_checkpoint(_command(broken, *FIGURES), tmp_path, marker)
    ckpts = resume_check.run_dir(broken) / "checkpoints"
    killed_at = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    # The kill came after step 9's checkpoint (mid-way through the second epoch; on a starved
    # machine the run may have reached step 12's, the end of that epoch) and before the end.
    assert KILL_AFTER <= killed_at < STEPS_PER_EPOCH * EPOCHS, killed_at

    resumed = subprocess.Popen(_command(broken, *FIGURES, "--ckpt_path=last"), cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-3000:]
    resumed_out, resumed_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err[-3000:]
    assert "bit-identical" not in resumed_err  # no old-checkpoint warning: the state was there

    a, b = resume_check.run_dir(straight), resume_check.run_dir(broken)
    assert b.name == "version_0"  # the resumed run continued the killed one's folder
    wa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    wb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert wa["global_step"] == wb["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert wa["state_dict"].keys() == wb["state_dict"].keys()
    unequal = [k for k in wa["state_dict"] if not torch.equal(wa["state_dict"][k], wb["state_dict"][k])]
    assert not unequal, f"weights differ: {unequal}"

    val_a, val_b = resume_check.scalars(a, "val/acc1"), resume_check.scalars(b, "val/acc1")
    assert len(val_a) == EPOCHS and val_a == val_b  # every epoch's, the final one included
    loss_a, loss_b = resume_check.scalars(a, "train/loss"), resume_check.scalars(b, "train/loss")
    # Every step's; Lightning writes a step's metrics just after that step's checkpoint, so the
    # kill (which follows the checkpoint at once) may take the checkpoint step's own with it.
    assert set(loss_a) - set(loss_b) <= {killed_at - 1}
    assert {s: loss_a[s] for s in loss_b} == loss_b
    final = f"val/acc1={list(val_a.values())[-1]:.4f}"
    print(f"killed with last.ckpt at step {killed_at}; val/acc1 per epoch {list(val_a.values())}; "
          f"{len(wa['state_dict'])} tensors equal; {len(resume_check.scalars(a, 'train/loss'))} train/loss steps equal")
    assert final in out and final in resumed_out

    figures = sorted(p.name for p in (a / "figures").glob("*.png"))
    assert any(name.startswith("evolution_") for name in figures)
    assert figures == sorted(p.name for p in (b / "figures").glob("*.png"))
    differ = [n for n in figures if (a / "figures" / n).read_bytes() != (b / "figures" / n).read_bytes()]
    assert not differ, f"figures differ: {differ}"


def test_a_checkpoint_without_the_state_still_resumes_with_a_warning(tmp_path):
    """A checkpoint from before the random state was saved: it resumes; one line says the rest
    of the run is not bit-identical. (In-process, with the checkpoint edited to look old.)"""
    from tests.cli.test_fit import _tiny, main

    main(["fit", *_tiny(tmp_path)])
    last = resume_check.run_dir(tmp_path / "runs") / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if "RandomState" not in k}
    ckpt.pop("ShapesDataModule", None)
    ckpt["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None)
    torch.save(ckpt, last)
    with pytest.warns(UserWarning, match="no random state.*not be bit-identical"):
        main(["fit", *_tiny(tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last")])
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 2 * ckpt["global_step"]
