"""The README's front page and the MkDocs site stay consistent: the two set-up commands are the
documented ones (torch==2.13.0 first; CI runs the same test command), every page in mkdocs.yml's nav
exists, and every API page names a module that exists. Cheap text checks: no mkdocs build here (CI runs
`mkdocs build --strict`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from neuralnets.config import compose

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CI = ROOT / ".ci" / "run"
# Data sources generated from a seed (no file, no download): what the first command may train on.
GENERATED = {"lorenz", "chaotic_rnn", "lorenz_sessions"}


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def _setup_commands() -> list[str]:
    """The commands of the README's first code block (comment lines left out)."""
    lang, body = _code_blocks(README.read_text())[0]
    assert lang == "bash", f"the README's first code block is {lang!r}, not the bash set-up commands"
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def _mkdocs() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_readme_is_a_short_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    # the set-up commands come before any section
    first_block = text.index("```bash")
    assert "\n## " not in text[:first_block]


def test_readme_starts_with_the_two_setup_commands():
    train, test = _setup_commands()
    for cmd in (train, test):
        # torch pinned first: any other spec pulls a multi-GB CUDA build on the project's machines
        assert "pip install torch==2.13.0" in cmd
        assert cmd.index("pip install torch==2.13.0") < cmd.index("pip install -e")
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert train.endswith("neuralnets-train experiment=lfads_lorenz")
    assert 'pip install -e ".[dev]"' in test and test.endswith("python -m pytest -q")


def test_first_command_trains_on_data_generated_without_download():
    recipe = re.search(r"neuralnets-train experiment=(\w+)$", _setup_commands()[0]).group(1)
    assert compose([f"experiment={recipe}"]).data.source in GENERATED  # as neuralnets-train composes it


def test_ci_runs_the_readme_install_and_test_command():
    ci = CI.read_text()
    test = _setup_commands()[1]
    extra = re.search(r'pip install -e "(\.\[[\w,]+\])"', test).group(1)
    lines = [line.strip() for line in ci.splitlines()]
    torch_line = lines.index("pip install -q torch==2.13.0")
    install_line = lines.index(f'pip install -q -e "{extra}"')
    assert torch_line < install_line < lines.index("python -m pytest -q")
    assert any("mkdocs build --strict" in line for line in lines)


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    nav = _nav_pages(_mkdocs()["nav"])
    assert len(nav) == len(set(nav)), "a page appears twice in the nav"
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk - set(nav) == set(), "pages missing from mkdocs.yml's nav"


@pytest.mark.parametrize("page", sorted(p.name for p in (DOCS / "api").glob("*.md")))
def test_api_pages_name_existing_modules(page):
    modules = re.findall(r"^::: ([\w.]+)", (DOCS / "api" / page).read_text(), flags=re.M)
    assert modules, f"docs/api/{page} renders no module"
    for name in modules:
        path = ROOT.joinpath(*name.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), name


def test_readme_links_to_existing_docs_pages():
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert links
    assert [link for link in links if not (ROOT / link).is_file()] == []
