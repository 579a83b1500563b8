"""Build the book: fetch the widget JavaScript, execute the notebooks, render with Jupyter Book.

``jb build book/`` loads this module as a Sphinx extension (``_config.yml``,
``sphinx.extra_extensions``). Before Sphinx reads the table of contents it

1. fetches ``require.js``, ``@jupyter-widgets/html-manager``'s ``embed-amd.js`` and MathJax
   with ``npm pack`` into ``book/_widgets_js/`` (git-ignored, served through
   ``html_extra_path``), so the sliders and equations work in the static HTML without a CDN —
   skipped when the files are there;
2. executes every TOC entry under ``_executed/`` — ``_executed/NAME`` is
   ``notebooks/NAME.md`` run by papermill with ``profile`` injected — reusing stored runs whose
   notebook text, parameters and library source are unchanged (:mod:`dpbr_lib.notebook_runner`).

The profile is the ``dpbr_profile`` value of ``_config.yml`` unless the environment variable
``DPBR_BOOK_PROFILE`` names another (``dpbr book --profile smoke`` sets it).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import yaml

from dpbr_lib import _validation, notebook_runner

#: Folder under ``book/`` that receives the fetched JavaScript (listed in ``html_extra_path``);
#: its ``_static/`` lands in the site's ``_static/``, where Sphinx resolves relative script paths.
WIDGET_JS_DIR = "_widgets_js"
#: The npm packages to fetch, pinned, as ``(name, version, {member: path under _static/},
#: skipped)``; a member ending in ``/`` copies everything below it but the ``skipped`` patterns.
NPM_PACKAGES: tuple[tuple[str, str, dict[str, str], tuple[str, ...]], ...] = (
    ("requirejs", "2.3.8", {"package/require.js": "jupyter-widgets/require.js"}, ()),
    # embed-amd.js bundles the base and controls widgets of ipywidgets 8; dist/ holds its fonts
    # (and the CommonJS bundles and source maps, which the pages do not load).
    ("@jupyter-widgets/html-manager", "1.0.15", {"package/dist/": "jupyter-widgets/"},
     ("*.map", "*/embed.js", "*/libembed-amd.js")),
    # The equations: the combined TeX component, its fonts, extensions and menu.
    ("mathjax", "3.2.2", {
        "package/es5/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js",
        **{f"package/es5/{part}/": f"mathjax/{part}/"
           for part in ("output/chtml", "input/tex", "ui", "a11y")},
    }, ()),
)
#: The one line of JavaScript this project writes, so that the widget manager loads its fonts
#: from beside itself rather than from a CDN.
ASSETS_SCRIPT = (
    "window.__jupyter_widgets_assets_path__ = new URL('.', document.currentScript.src).href;\n"
)
#: The script files the pages load (``nb_ipywidgets_js`` and ``mathjax_path``), under _static/.
SITE_SCRIPTS = (
    "jupyter-widgets/require.js",
    "jupyter-widgets/assets-path.js",
    "jupyter-widgets/embed-amd.js",
    "mathjax/tex-mml-chtml.js",
)
#: Folder under ``book/`` holding the executed notebooks that the TOC lists.
EXECUTED_DIR = "_executed"
#: Folder under ``book/`` holding the notebooks' text form (a link to the top-level notebooks/).
SOURCE_DIR = "notebooks"
PROFILE_VARIABLE = "DPBR_BOOK_PROFILE"


# --------------------------------------------------------------------------- site JavaScript
def site_scripts(book: Path) -> list[Path]:
    """The script files the pages load (present once :func:`fetch_site_js` ran)."""
    return [book / WIDGET_JS_DIR / "_static" / name for name in SITE_SCRIPTS]


def fetch_site_js(book: Path, *, report=print) -> Path:
    """Fetch the widget and MathJax JavaScript with ``npm pack`` unless already present.

    Returns the folder listed in ``html_extra_path`` (``book/_widgets_js``).
    """
    folder = book / WIDGET_JS_DIR
    if all(path.is_file() for path in site_scripts(book)):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm is needed once to fetch the widget and math JavaScript "
            "(Debian: apt-get install -y npm)."
        )
    static = folder / "_static"
    with tempfile.TemporaryDirectory() as scratch:
        for package, version, members, skipped in NPM_PACKAGES:
            spec = f"{package}@{version}"
            report(f"fetching {spec} with npm pack")
            result = subprocess.run(
                [npm, "pack", spec, "--pack-destination", scratch, "--silent"],
                check=True, capture_output=True, text=True, cwd=scratch,
            )
            tarball = Path(scratch) / result.stdout.strip().splitlines()[-1]
            _extract(tarball, members, skipped, static)
    (static / "jupyter-widgets" / "assets-path.js").write_text(ASSETS_SCRIPT)
    return folder


def _extract(
    tarball: Path, members: dict[str, str], skipped: tuple[str, ...], static: Path
) -> None:
    """Copy the tarball's ``members`` (file, or folder ending in ``/``) below ``static``."""
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if not member.isfile() or any(fnmatch.fnmatch(member.name, p) for p in skipped):
                continue
            for source, target in members.items():
                if member.name == source:
                    destination = static / target
                elif source.endswith("/") and member.name.startswith(source):
                    destination = static / target / member.name[len(source) :]
                else:
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                content = archive.extractfile(member)
                assert content is not None  # a regular file always has content
                destination.write_bytes(content.read())


# --------------------------------------------------------------------------- notebooks
def toc_files(book: Path) -> list[str]:
    """Every ``file:`` entry (and the root) of ``book/_toc.yml``, in order."""
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("sections", "chapters"):
                walk(entry.get(key, []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []) + toc.get("sections", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return files


def notebook_jobs(book: Path) -> list[tuple[Path, Path]]:
    """``(text notebook, executed notebook)`` for every TOC entry under ``_executed/``."""
    jobs = []
    for entry in toc_files(book):
        parts = Path(entry).parts
        if parts[0] != EXECUTED_DIR:
            continue
        name = Path(*parts[1:]).with_suffix("")
        source = book / SOURCE_DIR / name.with_suffix(".md")
        if not source.is_file():
            raise ValueError(f"The TOC entry {entry!r} needs the notebook {source}, not found.")
        jobs.append((source, book / EXECUTED_DIR / name.with_suffix(".ipynb")))
    return jobs


def execute_notebooks(book: Path, profile: str, *, report=print) -> list[Path]:
    """Execute (or reuse) every notebook of the TOC on ``profile``; cwd is the checkout."""
    profile = _validation.check_choice("profile", profile, notebook_runner.PROFILES)
    return notebook_runner.execute_all(
        notebook_jobs(book), {"profile": profile}, cwd=book.parent, report=report
    )


def book_profile(configured: str) -> str:
    """The profile for this build: ``$DPBR_BOOK_PROFILE`` if set, else ``configured``."""
    profile = os.environ.get(PROFILE_VARIABLE) or configured
    return _validation.check_choice("profile", profile, notebook_runner.PROFILES)


# --------------------------------------------------------------------------- Sphinx hooks
_LITERAL = re.compile(r"(``.*?``|:[a-z:]+:`[^`]*`|`[^`]*`)")


def escape_bars(lines: list[str]) -> list[str]:
    r"""Escape ``|`` outside literals, so plain-text formulas (``|x_i - m|``) stay text.

    The library's docstrings write formulas in plain text; reStructuredText would read
    ``|...|`` as a substitution reference. Doctest and indented literal blocks are left alone.

    >>> escape_bars(["minimising |x - m| (see ``|y|``)"])
    ['minimising \\|x - m\\| (see ``|y|``)']
    """
    escaped, literal_indent = [], None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and indent <= literal_indent:
            literal_indent = None
        doctest = line.lstrip().startswith((">>>", "..."))
        if literal_indent is not None or doctest:
            escaped.append(line)
        else:
            parts = _LITERAL.split(line)
            escaped.append("".join(
                part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts)
            ))
        if line.rstrip().endswith("::"):
            literal_indent = indent
    return escaped


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = escape_bars(lines)


def python_object(target: str, module: str | None) -> object | None:
    """What ``target`` names in ``module``'s namespace (or as an absolute dotted path).

    Docstrings write names the way the module's code sees them (``privacy.gaussian_sigma`` in
    :mod:`dpbr_lib.theory`, an imported ``config_hash``); ``None`` if the name exists nowhere.

    >>> python_object("privacy.gaussian_sigma", "dpbr_lib.theory").__name__
    'gaussian_sigma'
    >>> python_object("metrics.score", "dpbr_lib.inversion.experiments").__module__
    'dpbr_lib.inversion.metrics'
    >>> python_object("no_such_name", "dpbr_lib.theory") is None
    True
    """
    parts = target.split(".")
    packages = module.split(".") if module else []
    # The module itself, then its packages (``.metrics.X`` in dpbr_lib.inversion.experiments is
    # dpbr_lib.inversion.metrics.X), then the target as an absolute path.
    starts = [(".".join(packages[:i]), parts) for i in range(len(packages), 0, -1)]
    starts += [(".".join(parts[:i]), parts[i:]) for i in range(len(parts), 0, -1)]
    for start, rest in starts:
        try:
            obj = importlib.import_module(start)
        except ImportError:
            continue
        try:
            for part in rest:
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return None


def _package_object(name: str) -> object | None:
    """The object a bare ``name`` is bound to in some loaded module of :mod:`dpbr_lib`."""
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "dpbr_lib" and hasattr(module, name):
            return getattr(module, name)
    return None


def _missing_reference(app, env, node, contnode):
    """Resolve a Python cross-reference the way the docstring's code resolves the name.

    In order: the name in the docstring's module namespace (``privacy.gaussian_sigma`` in
    :mod:`dpbr_lib.theory`, an imported class) linked to where it is documented; else the one
    documented object whose dotted name ends with it; else, if the name exists in the code but
    is not documented (a private helper, a type alias), plain code. A name that exists nowhere
    is left to Sphinx, which reports it (``-n`` makes that an error).
    """
    if node.get("refdomain") != "py":
        return None
    # A role broken across docstring lines reaches here with a space inside the dotted name.
    target, domain = re.sub(r"\s+", "", node["reftarget"]), env.get_domain("py")
    obj = python_object(target, node.get("py:module"))
    if obj is None and "." not in target:
        obj = _package_object(target)
    if isinstance(obj, types.ModuleType):
        candidates = [obj.__name__]
    else:
        owner, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        candidates = [f"{owner}.{name}"] if owner and name else []
    fuzzy = domain.find_obj(env, None, None, target, None, 1)
    if len(fuzzy) == 1:
        candidates.append(fuzzy[0][0])
    for candidate in candidates:
        if candidate == node["reftarget"]:
            continue
        matches = domain.resolve_any_xref(
            env, node["refdoc"], app.builder, candidate, node, contnode
        )
        if matches:
            return matches[0][1]
    return None if obj is None else contnode


def _prose_attribute_comments(app) -> None:
    """Keep napoleon away from the ``#:`` comments of module constants and attributes.

    napoleon reads an attribute docstring's first line ``A: b`` as "type A, description b"; the
    comments of this project are prose ("Sizes of each split (digits: ...)"), which that reading
    turns into a bogus type and, with ``-n``, a broken reference. Functions and classes keep
    napoleon's Google-style sections.
    """
    from sphinx.ext import napoleon

    listeners = app.events.listeners["autodoc-process-docstring"]
    for position, listener in enumerate(listeners):
        if listener.handler is napoleon._process_docstring:

            def sections_only(app, what, *args, _napoleon=listener.handler) -> None:
                if what not in ("data", "attribute"):
                    _napoleon(app, what, *args)

            listeners[position] = listener._replace(handler=sections_only)


def _prepare(app, config) -> None:
    book = Path(app.srcdir)
    report = _reporter()
    fetch_site_js(book, report=report)
    loaded = [*config.nb_ipywidgets_js, config.mathjax_path]
    if sorted(loaded) != sorted(SITE_SCRIPTS):
        raise RuntimeError(
            f"_config.yml loads {loaded} (nb_ipywidgets_js, mathjax_path); the build serves "
            f"{list(SITE_SCRIPTS)}: make them agree, or pages would fetch scripts from a CDN."
        )
    profile = book_profile(config.dpbr_profile)
    report(f"executing notebooks on the {profile!r} profile")
    execute_notebooks(book, profile, report=report)


def _reporter():
    def report(message: str) -> None:
        print(f"[dpbr] {message}", file=sys.stderr, flush=True)

    return report


def setup(app) -> dict:
    """Sphinx entry point: fetch and execute before the TOC is read; docstring rendering."""
    app.setup_extension("sphinx.ext.autodoc")
    app.add_config_value("dpbr_profile", "quick", "env")
    # sphinx-external-toc reads the TOC at priority 900: the executed files must exist by then.
    app.connect("config-inited", _prepare, priority=100)
    app.connect("autodoc-process-docstring", _process_docstring, priority=600)  # after napoleon
    app.connect("missing-reference", _missing_reference)
    app.connect("builder-inited", _prose_attribute_comments)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
