"""The book: a strict smoke build of every chapter, the execution cache, config and API page.

``build_smoke_book`` builds a copy of ``book/`` once per test session on the ``smoke`` profile
with warnings as errors (``dpbr book --strict``: ``jb build -W -n --keep-going``); the notebook,
widget and browser tests read the same build.
"""

from __future__ import annotations

import json
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dpbr_lib
from dpbr_lib import book_build, notebook_runner

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


_BUILT: dict[str, Path | str] = {}  # one smoke build per session, shared by the test modules


def build_smoke_book(factory: pytest.TempPathFactory) -> Path:
    """Copy ``book/`` (links resolved, no build outputs) and build it strictly on ``smoke``.

    The copy has no widget JavaScript, so the build also fetches it with ``npm pack``.
    """
    if "failure" in _BUILT:  # a failed build fails every test that needs it, without rebuilding
        pytest.fail(str(_BUILT["failure"]))
    if "book" in _BUILT:
        return Path(_BUILT["book"])
    work = factory.mktemp("smoke-book")
    book = work / "book"
    shutil.copytree(
        BOOK, book, symlinks=False,
        ignore=shutil.ignore_patterns("_build", book_build.EXECUTED_DIR, book_build.WIDGET_JS_DIR),
    )
    result = subprocess.run(
        [sys.executable, "-m", "dpbr_lib.cli", "book", "--book", str(book),
         "--profile", "smoke", "--strict"],
        capture_output=True, text=True, cwd=work,
    )
    log = result.stdout + result.stderr
    (work / "build.log").write_text(log)
    if result.returncode:
        _BUILT["failure"] = f"strict smoke build failed:\n{log[-6000:]}"
        pytest.fail(str(_BUILT["failure"]))
    _BUILT["book"] = book
    return book


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> Path:
    return build_smoke_book(tmp_path_factory)


def _toc_pages() -> list[str]:
    return book_build.toc_files(BOOK)


# --------------------------------------------------------------------------- the strict build
def test_strict_build_has_every_page_of_the_toc(smoke_book):
    html = smoke_book / "_build" / "html"
    for page in _toc_pages():
        assert (html / f"{page}.html").is_file(), page
    assert (html / "index.html").is_file()
    log = (smoke_book.parent / "build.log").read_text()
    assert "Book built" in log and str(html / "index.html") in log


def test_every_chapter_was_executed_by_this_build_on_smoke(smoke_book):
    library = notebook_runner.library_hash()
    for source, output in book_build.notebook_jobs(smoke_book):
        notebook = json.loads(output.read_text())
        assert notebook["metadata"]["dpbr"]["parameters"] == {"profile": "smoke"}
        key = notebook_runner.execution_key(source, {"profile": "smoke"}, library)
        assert notebook["metadata"]["dpbr"]["execution_key"] == key
        figures = [
            o for cell in notebook["cells"] for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        assert figures, f"{output.name} drew no figure"


def test_pages_load_widget_javascript_from_the_site_not_a_cdn(smoke_book):
    html = smoke_book / "_build" / "html"
    for page in html.rglob("*.html"):
        text = page.read_text()
        external = re.findall(r'<script[^>]+src="(https?://[^"]+)"', text)
        assert not external, (page.name, external)
    theory = (html / "_executed" / "theory_bounds.html").read_text()
    for name in book_build.SITE_SCRIPTS:
        assert f'src="../_static/{name}' in theory
        assert (html / "_static" / name).is_file()
    assert "application/vnd.jupyter.widget-state+json" in theory


def test_intro_shows_the_key_figure_drawn_by_the_build(smoke_book):
    intro = (smoke_book / "_build" / "html" / "intro.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', intro)
    assert images, "the introduction shows no figure"
    for src in images:
        assert (smoke_book / "_build" / "html" / src).is_file(), src


def test_unchanged_notebooks_are_reused(smoke_book):
    before = {out: out.stat().st_mtime_ns for _, out in book_build.notebook_jobs(smoke_book)}
    messages: list[str] = []
    book_build.execute_notebooks(smoke_book, "smoke", report=messages.append)
    assert len(messages) == len(before)
    assert all(" reused in " in message for message in messages), messages
    assert {out: out.stat().st_mtime_ns for out in before} == before


# --------------------------------------------------------------------------- cache keys
def test_execution_key_changes_with_text_parameters_and_library(tmp_path):
    source = tmp_path / "nb.md"
    source.write_text("text")
    key = notebook_runner.execution_key(source, {"profile": "smoke"}, "lib")
    assert key == notebook_runner.execution_key(source, {"profile": "smoke"}, "lib")
    assert key != notebook_runner.execution_key(source, {"profile": "quick"}, "lib")
    assert key != notebook_runner.execution_key(source, {"profile": "smoke"}, "lib2")
    source.write_text("text, edited")
    assert key != notebook_runner.execution_key(source, {"profile": "smoke"}, "lib")


def test_stored_key_of_a_missing_or_foreign_notebook_is_none(tmp_path):
    assert notebook_runner.stored_key(tmp_path / "missing.ipynb") is None
    (tmp_path / "plain.ipynb").write_text(json.dumps({"metadata": {}}))
    assert notebook_runner.stored_key(tmp_path / "plain.ipynb") is None


# --------------------------------------------------------------------------- configuration
def test_config_loads_exactly_the_fetched_scripts():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert config["html_extra_path"] == [book_build.WIDGET_JS_DIR]
    loaded = [*config["nb_ipywidgets_js"], config["mathjax_path"]]
    assert loaded == list(book_build.SITE_SCRIPTS)
    assert config["dpbr_profile"] in notebook_runner.PROFILES


def test_book_links_to_the_single_top_level_copies():
    for name in ("_config.yml", "_toc.yml", "notebooks"):
        link = BOOK / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name


def test_every_notebook_is_a_chapter_and_every_chapter_a_notebook():
    chapters = {Path(p).name for p in _toc_pages() if p.startswith(book_build.EXECUTED_DIR)}
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.md")}
    assert chapters == notebooks


def test_toc_files_walks_parts_and_sections(tmp_path):
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "intro",
        "parts": [{"caption": "A", "chapters": [
            {"file": "_executed/x", "sections": [{"file": "y"}]}, {"file": "z"}]}],
    }))
    assert book_build.toc_files(tmp_path) == ["intro", "_executed/x", "y", "z"]


def test_missing_notebook_for_a_toc_entry_is_named(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n"
                                       "chapters:\n  - file: _executed/ghost\n")
    with pytest.raises(ValueError, match="ghost"):
        book_build.notebook_jobs(tmp_path)


def test_profile_comes_from_the_environment_then_the_config(monkeypatch):
    monkeypatch.delenv(book_build.PROFILE_VARIABLE, raising=False)
    assert book_build.book_profile("quick") == "quick"
    monkeypatch.setenv(book_build.PROFILE_VARIABLE, "smoke")
    assert book_build.book_profile("quick") == "smoke"
    monkeypatch.setenv(book_build.PROFILE_VARIABLE, "huge")
    with pytest.raises(ValueError, match="'profile' parameter must be one of"):
        book_build.book_profile("quick")


def test_fetch_is_skipped_when_the_files_are_present(tmp_path, monkeypatch):
    for path in book_build.site_scripts(tmp_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("// present")
    monkeypatch.setattr(shutil, "which", lambda name: pytest.fail("npm was called"))
    assert book_build.fetch_site_js(tmp_path) == tmp_path / book_build.WIDGET_JS_DIR


# --------------------------------------------------------------------------- API reference
def test_api_page_documents_every_public_module():
    page = (BOOK / "api.md").read_text()
    documented = set(re.findall(r"\.\. automodule:: (\S+)", page))
    public = {
        module.name for module in pkgutil.walk_packages(dpbr_lib.__path__, "dpbr_lib.")
        if not any(part.startswith("_") for part in module.name.split("."))
        and not module.name.startswith("dpbr_lib.cli")
    }
    assert public <= documented, sorted(public - documented)


def test_escape_bars_keeps_literals_and_doctests():
    lines = [
        "minimising |x - m|, see ``|y|`` and :math:`|z|`",
        ">>> abs(-1) | 0",
        "Example::",
        "",
        "    a | b",
        "back to |text|",
    ]
    assert book_build.escape_bars(lines) == [
        "minimising \\|x - m\\|, see ``|y|`` and :math:`|z|`",
        ">>> abs(-1) | 0",
        "Example::",
        "",
        "    a | b",
        "back to \\|text\\|",
    ]


def test_python_object_resolves_names_as_the_module_sees_them():
    from dpbr_lib import privacy

    assert book_build.python_object("privacy.gaussian_sigma", "dpbr_lib.theory") is (
        privacy.gaussian_sigma
    )
    assert book_build.python_object("dpbr_lib.privacy", None) is privacy
    assert book_build.python_object("privacy.no_such_function", "dpbr_lib.theory") is None
    # relative to the module's packages, as Sphinx's ".metrics.X" means
    from dpbr_lib.inversion import metrics

    assert book_build.python_object("metrics.score", "dpbr_lib.inversion.experiments") is (
        metrics.score
    )
