"""The README and the documentation site (``docs/``, ``mkdocs.yml``): every code block runs as written,
every table that comes from ``results/`` is what the project's command generates from the committed
files, the strict build passes offline, and every public name is documented."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def _code(language: str) -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        found = re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)
        out += [(page.relative_to(ROOT).as_posix(), i, code) for i, code in enumerate(found)]
    return out


PYTHON = _code("python")
TOML = _code("toml")
SHELL = [(page, line.split("#", 1)[0].strip()) for page, _, block in _code("bash") for line in block.splitlines()
         if line.split("#", 1)[0].strip()]


def test_every_usage_page_has_an_example():
    """The concept and integration pages each show runnable code, as the README did before the split."""
    with_code = {page for page, _, _ in PYTHON}
    usage = [p.relative_to(ROOT).as_posix() for p in sorted((DOCS / "concepts").glob("*.md"))
             + sorted((DOCS / "integrations").glob("*.md")) if p.name != "index.md"]
    assert usage and [p for p in usage if p not in with_code] == []
    assert "README.md" in with_code and len(PYTHON) >= 15


@pytest.mark.parametrize("page, index, code", PYTHON, ids=[f"{p}[{i}]" for p, i, _ in PYTHON])
def test_python_block_runs(page, index, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}[python block {index}]", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("page, index, code", TOML, ids=[f"{p}[{i}]" for p, i, _ in TOML])
def test_toml_suite_loads_and_dry_runs(page, index, code, tmp_path, capsys):
    """Every TOML suite in the docs loads with the config checks and lists its cells."""
    from benchmarks.__main__ import main
    from benchmarks.config import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(code)
    assert load_suite(path).cells()
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "pending" in capsys.readouterr().out


@pytest.mark.parametrize("page, command", SHELL, ids=[f"{p}: {c}" for p, c in SHELL])
def test_shell_command_is_real(page, command):
    """The shell blocks (too long to run in the tests: whole suites) name what exists: a make target of
    the Makefile, a subcommand of `python -m benchmarks` with options its parser accepts, an extra of
    pyproject.toml."""
    import shlex

    import tomllib

    words = shlex.split(command)
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets
    elif words[:3] == ["python", "-m", "benchmarks"]:
        from benchmarks.__main__ import _parser

        if words[3] == "gpu":
            from benchmarks.gpu import _parser as gpu_parser

            gpu_parser().parse_args(words[4:])
        elif words[3] != "perf":
            _parser().parse_args(words[3:])
    elif words[:2] == ["pip", "install"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for spec in words[2:]:
            if spec != "-e":
                wanted = re.findall(r"\[(.*?)\]", spec)
                assert all(e in extras for group in wanted for e in group.split(","))
    else:
        raise AssertionError(f"{page}: a shell command this test does not know how to check: {command}")


def test_generated_tables_are_the_committed_results():
    """Every block of the README and the docs is what `python -m benchmarks docs-tables` writes from
    results/ (and the README has the quick verdicts, the docs every kind of block)."""
    assert blocks.stale(blocks.documents()) == []
    names = {name for page in blocks.documents() for name, _ in blocks.blocks(page.read_text())}
    assert {"verdicts-quick", "verdicts-standard", "across-standard", "perf-table", "api-index", "deprecations"} <= names
    assert {name for name, _ in blocks.blocks(README.read_text())} == {"verdicts-quick", "replicability-quick",
                                                                       "agreement-quick-replication"}
    assert len([n for n in names if n.startswith("claims-")]) == 7


def test_the_own_suites_example_declares_hypotheses_and_names_every_backbone():
    """The own-suites page's example has confirmatory hypotheses (a first run reports verdicts, not an empty
    table), lists every built-in backbone, and links the key reference page, which includes the generated
    benchmarks/configs/README.md."""
    from benchmarks.backbones import BACKBONES
    from benchmarks.config import suite_from_toml

    page = DOCS / "benchmarks" / "own-suites.md"
    [example] = [code for name, _, code in TOML if name == "docs/benchmarks/own-suites.md"]
    suite = suite_from_toml(example)
    assert [h.name for h in suite.hypotheses if not h.exploratory] and [h for h in suite.hypotheses if h.exploratory]
    comment = " ".join(re.findall(r"^# (?:backbone: )?(.*)$", example, flags=re.M))
    assert [name for name in BACKBONES if name not in comment] == []
    assert "](config-keys.md)" in page.read_text()
    assert '--8<-- "benchmarks/configs/README.md"' in (DOCS / "benchmarks" / "config-keys.md").read_text()


def test_make_docs_installs_the_docs_extra_alone():
    """`make docs` builds in its own environment from the docs extra of pyproject.toml, not from the
    test-and-benchmark .venv (6.7 GB): its recipe installs what DOCS_EXTRA prints, and that is the extra."""
    import tomllib

    dry = subprocess.run(["make", "-n", "-B", "docs", "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert ".[test,bench]" not in dry and ".venv/" not in dry
    assert "pip install --quiet -r .venv-docs/requirements.txt" in dry and ".venv-docs/bin/mkdocs build --strict" in dry
    code = re.search(r"-c '(.*)' > \.venv-docs/requirements\.txt", dry).group(1)
    printed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert printed.stdout.split() == extras["docs"]


def test_a_stale_table_is_found_and_rewritten(tmp_path):
    """The check can fail: a verdict changed in a copy of results/ makes the README's block stale, and
    `write` puts the new verdict in."""
    results = tmp_path / "results"
    for run in ("quick", "quick-replication"):
        shutil.copytree(ROOT / "results" / run, results / run, ignore=shutil.ignore_patterns("*.png", "runs.*"))
    verdicts = pd.read_csv(results / "quick" / "verdicts.csv")
    verdicts.loc[0, "verdict"] = "contradicted"
    verdicts.to_csv(results / "quick" / "verdicts.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    changed = [f"{readme}: verdicts-quick", f"{readme}: replicability-quick"]  # both read verdicts.csv
    assert blocks.stale([readme], results) == changed
    assert blocks.write([readme], results) == changed
    assert blocks.stale([readme], results) == [] and "| contradicted |" in readme.read_text().split("\n| H1b")[0]
    with pytest.raises(ValueError, match="unknown generated block"):
        blocks.generate("verdict-quick", results)


def test_docs_tables_command(capsys):
    from benchmarks.__main__ import main

    assert main(["docs-tables", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


#: What the site builds without: `make docs` installs the docs extra alone (mkdocstrings reads the source
#: statically), so the build may import neither the library nor the suite nor their dependencies.
NOT_IN_THE_DOCS_ENVIRONMENT = ("torch", "torchvision", "timm", "pandas", "numpy", "matplotlib", "lrgroups",
                               "benchmarks")


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` with the modules of NOT_IN_THE_DOCS_ENVIRONMENT unimportable."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    block = (f"import sys; sys.modules.update(dict.fromkeys({NOT_IN_THE_DOCS_ENVIRONMENT!r})); "
             "from mkdocs.__main__ import cli; cli()")
    return subprocess.run([sys.executable, "-c", block, "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_site_builds_strict_and_offline(tmp_path):
    """`make docs`: the strict build passes (no broken link, cross-reference or docstring warning) with
    neither torch nor lrgroups importable (the docs extra alone), the API pages hold the public names, the
    suite's figures (each a link to its full-size PNG) and the config key reference are in the site, code
    wraps at the page's width (the project's style sheet), and no page loads a script, a style sheet, a
    font or an image from the network."""
    site = tmp_path / "site"
    build = _mkdocs(ROOT / "mkdocs.yml", site)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "WARNING" not in build.stderr
    optimizer = (site / "api" / "optimizer.html").read_text()
    assert 'id="lrgroups.optimizer.LayerwiseOptimizer.freeze"' in optimizer
    assert (site / "results" / "quick" / "curves_q2_ulmfit_new_classes.png").exists()
    assert (site / "results" / "standard" / "across_backbones.png").exists()
    keys = (site / "benchmarks" / "config-keys.html").read_text()
    assert "<table>" in keys and "<td><code>train_pool</code></td>" in keys and "--8&lt;--" not in keys
    assert 'href="config-keys.html"' in (site / "benchmarks" / "own-suites.html").read_text()
    css = (site / "stylesheets" / "extra.css").read_text()  # code wraps at the page's width, no line is cut off
    assert re.search(r"pre > code \{[^}]*white-space: pre-wrap", css)
    standard = (site / "benchmarks" / "standard.html").read_text()
    assert 'href="../stylesheets/extra.css"' in standard
    assert re.search(r'<a class="lrgroups-figure" href="../results/standard/across_backbones.png"[^>]*><img', standard)
    remote = re.compile(r"""<(?:script|img|iframe)[^>]+src=["']https?:|<link[^>]+href=["']https?:|url\(["']?https?:""")
    loads = [f"{p.relative_to(site)}: {m.group(0)}" for p in site.rglob("*") if p.suffix in (".html", ".css", ".js")
             for m in remote.finditer(p.read_text(errors="replace"))]
    assert loads == []


@pytest.mark.slow
def test_a_broken_cross_reference_fails_the_build(tmp_path):
    """The strict build is a check that can fail: a page linking a name that does not exist, with the
    project's own configuration."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS / "_hooks", docs / "_hooks")
    (docs / "index.md").write_text("# x\n\nSee [`nothing`][lrgroups.no_such_name].\n\n::: lrgroups.wise_ft\n")
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[0].replace("docs/_hooks/", f"{docs}/_hooks/")
    (tmp_path / "mkdocs.yml").write_text(config.replace("docs_dir: docs", f"docs_dir: {docs}"))
    build = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert build.returncode != 0 and "lrgroups.no_such_name" in build.stderr


def _public_modules() -> list[str]:
    import lrgroups

    return ["lrgroups", *(m.name for m in pkgutil.walk_packages(lrgroups.__path__, "lrgroups.")
                          if not any(part.startswith("_") for part in m.name.split(".")))]


def test_every_public_module_has_an_api_page():
    documented = {m for page in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)}
    assert [m for m in _public_modules() if m != "lrgroups" and m not in documented] == []


def test_every_public_name_has_a_docstring():
    """What the API reference renders: every public module, class, function and method (a framework
    hook included) says what it does."""
    missing = []
    for name in _public_modules():
        module = importlib.import_module(name)
        if not module.__doc__:
            missing.append(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
                missing.append(f"{name}.{attr}")
            for member, value in (vars(obj).items() if inspect.isclass(obj) else ()):
                function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if not member.startswith("_") and inspect.isfunction(function) and not function.__doc__:
                    missing.append(f"{name}.{attr}.{member}")
    assert missing == []


def test_the_api_index_lists_every_exported_name():
    import lrgroups

    index = (DOCS / "api" / "index.md").read_text()
    assert [n for n in lrgroups.__all__ if f"][lrgroups.{n}]" not in index] == []
    for name in ("LayerwiseFinetuning", "LayerwiseDDPStrategy", "LayerwiseCallback"):
        assert f"[`{name}`]" in index


def test_readme_is_short_and_links_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", README.read_text()))
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    modules = {p for p in pages if p.startswith("docs/api/") and p != "docs/api/index.md"}
    assert pages - modules - linked == set() and linked <= pages


def test_recipes_page_prose_holds_on_the_committed_runs():
    """What docs/recipes.md says in words is what the committed runs measured: on the quick suite's
    ResNet, most of the first block's gain over no adaptation on contrast is its BatchNorm statistics
    alone; and the ULMFiT sentence about the standard suite."""
    text = " ".join((DOCS / "recipes.md").read_text().split())
    assert "on the suite's ResNet most of the first block's gain on contrast is the statistics alone" in text
    selected = pd.read_csv(ROOT / "results" / "quick" / "selected.csv").set_index(["target", "strategy"])
    accuracy = {s: selected.loc[("contrast", s), "test_accuracy"] for s in ("no_adaptation", "bn_only", "surgical_first")}
    assert accuracy["bn_only"] - accuracy["no_adaptation"] > (accuracy["surgical_first"] - accuracy["no_adaptation"]) / 2
    check_ulmfit_sentence(text)
    check_quick_ulmfit_sentence(text)


def check_quick_ulmfit_sentence(text: str) -> None:
    """The recipes page's sentence on ULMFiT in the quick suite holds on results/quick and its replication."""
    from benchmarks.stats import compatible

    assert ("H2a, H2b and H2d read *not reproduced* in the committed reference and compatible words in its "
            "replication") in text and "both runs' effects are negative" in text
    runs = [pd.read_csv(ROOT / "results" / name / "verdicts.csv").set_index("hypothesis").loc[["H2a", "H2b", "H2d"]]
            for name in ("quick", "quick-replication")]
    assert (runs[0].verdict == "not reproduced").all()
    assert all(compatible(a, b) for a, b in zip(runs[0].verdict, runs[1].verdict, strict=True))
    assert all((run.effect < 0).all() for run in runs)
    assert "(discriminative rates' convergence, X2c, is exploratory)" in text
    assert pd.read_csv(ROOT / "results" / "quick" / "verdicts.csv").set_index("hypothesis").loc["X2c", "exploratory"]


ULMFIT_SENTENCE = ("In the standard suite's confirmatory run, no family reproduces ULMFiT's accuracy gain (every accuracy "
                   "effect is at most +0.02, and negative on the ViT and on the ImageNet Lite0), while forgetting of the "
                   "source task is lower in every family that has one (reproduced on the ConvNeXt)")
ULMFIT_FACTS = {
    "H2a": lambda v: (v.effect <= 0.02).all() and (v.verdict != "reproduced").all()
    and (v.loc[["H2a-vit", "H2a-lite0"]].effect < 0).all(),
    "H2b": lambda v: (v.effect <= 0.02).all() and (v.verdict != "reproduced").all()
    and (v.loc[["H2b-vit", "H2b-lite0"]].effect < 0).all(),
    "H2e": lambda v: (v.effect > 0).all() and v.loc["H2e-convnext", "verdict"] == "reproduced",
    "H2f": lambda v: (v.effect > 0).all() and v.loc["H2f-convnext", "verdict"] == "reproduced",
}


def check_ulmfit_sentence(text: str) -> None:
    """The recipes page's sentence on ULMFiT in the standard suite holds on results/standard."""
    verdicts = pd.read_csv(ROOT / "results" / "standard" / "verdicts.csv").set_index("hypothesis")
    assert ULMFIT_SENTENCE in text
    for claim, expected in ULMFIT_FACTS.items():
        assert expected(verdicts[verdicts.index.str.startswith(claim + "-")]), claim
