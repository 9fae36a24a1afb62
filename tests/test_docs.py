"""The docs say what the code does: every verb, family, source and bench script is in the README, the examples
print what genlab prints, and nothing the repository ships points outside it."""

import re
import subprocess
from pathlib import Path

import pytest

import genlab
from genlab.config.families import family_names
from genlab.data.registry import source_names

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def readme_row(section: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| `{section}` |"))


def test_every_cli_verb_has_an_example_line():
    from genlab.cli import app

    verbs = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(verbs) >= 14
    assert [v for v in verbs if f"genlab {v} " not in README] == []


def test_the_config_table_names_every_family_and_every_source():
    model, data = readme_row("model"), readme_row("data")
    assert [f for f in family_names() if f"`{f}`" not in model.split("then the family")[0]] == []
    assert [s for s in source_names() if f"`{s}`" not in data] == []


def test_the_config_error_example_is_what_genlab_says():
    with pytest.raises(genlab.ConfigError) as err:
        genlab.load_config({"model": {"family": "difusion"}})
    assert f"error: {err.value}" in README


def test_every_bench_script_is_documented_and_make_bench_runs_the_ones_the_readme_says():
    scripts = sorted(p.name for p in (ROOT / "bench").glob("*.py")  # scripts, not the helpers they share
                     if '__name__ == "__main__"' in p.read_text())
    assert [s for s in scripts if f"python bench/{s}" not in README] == []
    made = re.findall(r"bench/(\w+\.py)", (ROOT / "Makefile").read_text())
    listed = re.findall(r"^- `python bench/(\w+\.py)", README.split("## Benchmarks")[1], re.M)
    assert made == listed[: len(made)] and "runs the four speed benchmarks" in README and len(made) == 4


def test_nothing_the_repository_ships_refers_outside_it():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sibling = "../" + "shared"  # spelled apart, so this file does not name it
    outside = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).suffix in {".py", ".md", ".yaml", ".toml", ""}
               and sibling in (ROOT / f).read_text(errors="ignore")]
    assert outside == []
