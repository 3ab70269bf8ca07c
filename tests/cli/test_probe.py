import json

import pytest

from zflight.cli import main


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpt_factory):
    return tiny_ckpt_factory(20)


def test_transfer_task_writes_json_table_and_curve_with_random_baseline(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "probe"
    doc = main(["probe", "--ckpt_path", str(tiny_ckpt), "--transfer_shapes", "--pool_per_class", "5",
                "--train_per_class", "2", "--layers", "conv1", "fc7", "--C", "0.1", "--random_baseline",
                "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["probe.json", "probe.md", "probe.png"]
    assert json.loads((out / "probe.json").read_text()) == json.loads(json.dumps(doc))
    assert list(doc["models"]) == ["trained", "random weights"]
    trained = doc["models"]["trained"]
    assert trained["classes"][:2] == ["pentagon", "hexagon"] and trained["num_train"] == [20]
    assert trained["num_test"] == [30] and list(trained["layers"]) == ["conv1", "fc7"]
    table = (out / "probe.md").read_text()
    assert "| mean per-class accuracy (%) | conv1 | fc7 |" in table and "| random weights |" in table
    assert "| trained |" in capsys.readouterr().out


def test_image_folders_probe_with_default_layers(tiny_ckpt, photo_folders, tmp_path):
    classes, _ = photo_folders
    doc = main(["probe", "--ckpt_path", str(tiny_ckpt), "--images", str(classes), "--test_images", str(classes),
                "--layers", "conv2", "--C", "1", "--out", str(tmp_path / "p")])
    assert doc["models"]["trained"]["classes"] == ["apple", "bicycle", "cloud"]
    assert doc["models"]["trained"]["num_train"] == [9] and doc["models"]["trained"]["num_test"] == [9]


def _rename_class(src, dst, old, new):
    import shutil

    shutil.copytree(src, dst)
    (dst / old).rename(dst / new)
    return dst


@pytest.mark.parametrize("case, message", [
    ("unknown layer", "--layers: layer='conv9' is not a module of ZFNet; did you mean 'conv5'"),
    ("too many per class", "--train_per_class: train_per_class=3 is more than class 'apple' can give"),
    ("test classes differ", "--test_images: its classes differ from --images' (only in --images: cloud; "
                            "only in --test_images: cloudy)"),
    ("single class", "a probe needs at least two classes"),
    ("flat folder", "has no class subfolders"),
])
def test_bad_input_is_one_error_line_and_no_output(case, message, tiny_ckpt, photo_folders, tmp_path, capsys):
    classes, flat = photo_folders
    args = ["probe", "--ckpt_path", str(tiny_ckpt), "--images", str(classes), "--layers", "conv1",
            "--train_per_class", "2", "--C", "1"]
    extra = {
        "unknown layer": ["--layers", "conv9"],
        "too many per class": ["--train_per_class", "3"],
        "test classes differ": ["--test_images", str(_rename_class(classes, tmp_path / "t", "cloud", "cloudy"))],
        "single class": ["--drop_class", "apple", "bicycle"],
        "flat folder": ["--images", str(flat)],
    }[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(args + extra + ["--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
