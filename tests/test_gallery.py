"""The gallery's check (docs/check_examples.py) knows every example, and each example
documents its --quick and --output options and the figures it writes."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _check_examples():
    spec = importlib.util.spec_from_file_location("check_examples", ROOT / "docs" / "check_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_checked_and_documents_its_figures():
    check = _check_examples()
    on_disk = {p.stem for p in (ROOT / "examples").glob("*.py")}
    assert on_disk == set(check.EXAMPLES) | set(check.NEEDS_DATA)
    gallery = (ROOT / "docs" / "gallery.md").read_text()
    for name, figures in check.EXAMPLES.items():
        source = (ROOT / "examples" / f"{name}.py").read_text()
        assert '"--quick"' in source and '"--output"' in source, name
        for figure in figures:
            assert f'"{figure}"' in source and figure in gallery, (name, figure)


def test_a_failing_example_is_reported(tmp_path, monkeypatch, capsys):
    check = _check_examples()
    (tmp_path / "broken.py").write_text("import sys\nsys.exit('no figures today')\n")
    monkeypatch.setattr(check, "EXAMPLES_DIR", tmp_path)
    monkeypatch.setattr(check, "EXAMPLES", {"broken": ["a.png"]})
    monkeypatch.setattr(check, "NEEDS_DATA", {})
    assert check.main(["--timeout", "60"]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "FAILED" in out and "no figures today" in out
    assert "did not write a.png" in out
