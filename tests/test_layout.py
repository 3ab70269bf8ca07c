"""The rooms of the package keep their rules (docs/architecture-of-the-code.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zflight"
TESTS = Path(__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("room", ["attribution", "analysis"])
def test_attribution_and_analysis_import_neither_argparse_nor_lightning(room):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_imports(path) & {"argparse", "lightning", "pytorch_lightning"})
        for path in sorted((PACKAGE / room).glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_figures_run_no_model_and_parse_no_arguments():
    for path in sorted((PACKAGE / "figures").glob("*.py")):
        assert not _imports(path) & {"argparse", "lightning"}, path
        assert "zflight.attribution.occlusion import occlusion_maps" not in path.read_text(), path


def test_every_analysis_subcommand_is_a_module_of_zflight_cli():
    from zflight.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module.startswith("zflight.cli."), name
        assert (PACKAGE / "cli" / f"{module.rsplit('.', 1)[1]}.py").is_file(), module


def test_each_test_file_is_named_after_a_module_of_its_room():
    rooms = ["analysis", "attribution", "callbacks", "cli", "data", "figures"]
    for room in rooms:
        modules = {p.stem.strip("_") for p in (PACKAGE / room).glob("*.py")}
        for test in (TESTS / room).glob("test_*.py"):
            stem = test.stem[len("test_"):]
            assert any(stem == m or stem.startswith(f"{m}_") for m in modules), test
