"""The documentation: README for users, results rendered from the committed JSON."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _render_results():
    spec = importlib.util.spec_from_file_location("render_results",
                                                  ROOT / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_results_page_and_readme_table_are_rendered_from_the_committed_json(capsys):
    """docs/results.md and the README's quick-start table equal what the script renders now,
    so no figure in them was typed by hand or left behind by a re-run result."""
    assert _render_results().main(["--check"]) == 0, capsys.readouterr().err


def test_every_committed_result_is_indexed():
    module = _render_results()
    indexed = {r.path for r in module.RESULTS}
    committed = {p.name for p in module.RESULTS_DIR.iterdir()
                 if p.suffix == ".json" or (p / "metrics.json").is_file()}
    assert committed <= indexed, f"not in the results index: {sorted(committed - indexed)}"


def test_readme_is_a_users_document():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for section in ("## Install", "## Quick start", "## Python API", "## Command line",
                    "## Layout"):
        assert section in lines
