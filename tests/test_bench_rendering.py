"""How the suite's results are shown (issue 29, item 6): verdict tables that put the verdict beside
its effect and interval, one column per family, one colour per strategy in every figure, a forest plot
with a legend entry for every marker, figures that open at full size on the site."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_hex

from benchmarks import across as across_module
from benchmarks import blocks, report

ROOT = Path(__file__).resolve().parents[1]
STRATEGY_BLOCKS = ("lp_ft", "wise", "l2_sp", "surgical", "discriminative", "gradual_unfreezing", "layer_decay")


def _header(table: str) -> list[str]:
    return [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]


def _cells(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


@pytest.mark.parametrize("name", ["verdicts-quick", "verdicts-standard", *(f"claims-{s}" for s in STRATEGY_BLOCKS)])
def test_a_verdict_table_shows_effect_interval_and_verdict_first(name):
    """The effect, its Holm-adjusted interval and the verdict are the first columns after the names of
    the claim, so that a page at 1280 px shows the verdict without scrolling sideways; the paper a
    claim mirrors is shortened to its citation and comes last."""
    table = blocks.generate(name)
    header = _header(table)
    first = header.index("effect")
    assert header[first:first + 3] == ["effect", "Holm-adjusted interval", "verdict"]
    assert first <= 2 and "mirrors" not in header
    for row in _cells(table):
        assert row[first + 1] == "–" or (row[first + 1].startswith("[") and row[first + 1].endswith("]"))
    if name.startswith("claims-"):
        assert header[-1] == "paper"
        assert all(":" not in row[-1] and len(row[-1]) <= 50 for row in _cells(table))


def test_the_across_table_has_a_column_per_family():
    """A cell names one family's verdict, never several families' results in one cell."""
    table = blocks.generate("across-standard")
    header = _header(table)
    verdicts = pd.read_csv(ROOT / "results" / "standard" / "verdicts.csv")
    families = {f"{r.family} ({r.hypothesis.split('-', 1)[1]})" for r in verdicts.itertuples()}
    assert header[0] == "claim" and set(header[1:1 + len(families)]) == families
    for row in _cells(table):
        assert all(";" not in cell for cell in row[1:1 + len(families)])
    h1a = next(row for row in _cells(table) if row[0] == "H1a")
    assert h1a[header.index("ResNet (resnet)")].startswith("reproduced<br>0.187 [")


def _runs(order: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for target, strategies in order.items():
        for i, strategy in enumerate(strategies):
            for seed in (0, 1):
                curve = [0.1 * (i + 1), 0.2 * (i + 1) + 0.01 * seed, 0.3 * (i + 1)]
                rows.append({"experiment": "e", "target": target, "strategy": strategy, "seed": seed,
                             "kind": "finetune", "selected": True, "curve_step": [0, 5, 10],
                             "curve_forgetting_step": [0, 5, 10], "curve_val_accuracy": curve,
                             "curve_test_accuracy": curve, "curve_retention_precise_bn": curve[::-1]})
    return pd.DataFrame(rows)


def _figures(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, out, name: figures.append(fig) or name)
    return figures


def test_every_plot_gives_a_strategy_the_one_colour_of_the_map(monkeypatch, tmp_path):
    """The same strategy has the same colour in every figure, whatever the other strategies of the
    figure and their order (the colour of ``strategy_colour``, a derived strategy its parent's)."""
    order = {"a": ["full", "l2_sp", "discriminative"], "b": ["discriminative", "l2_sp", "full"]}
    runs = _runs(order)
    front = pd.DataFrame([{"experiment": "e", "target": t, "strategy": s, "lr": lr, "test_accuracy": 0.5 + lr,
                           "retention_precise_bn": 0.9 - lr} for t, names in order.items() for s in names
                          for lr in (0.01, 0.03)])
    wise = pd.DataFrame([{"experiment": e, "strategy": f"{parent}+wise_{alpha}", "test_accuracy": 0.5 + alpha,
                          "ood_accuracy": 0.4 + alpha} for e, parents in (("e", ["top_ft", "top_lp_ft"]),
                                                                          ("f", ["top_lp_ft", "top_ft"]))
                         for parent in parents for alpha in (0.0, 0.5, 1.0)])
    figures = _figures(monkeypatch)
    report._plot_curves(runs, tmp_path)
    report._plot_forgetting(runs, pd.DataFrame(), tmp_path)
    report._plot_pareto(front, tmp_path)
    report._plot_wise(wise, tmp_path)
    assert len(figures) == 2 + 2 + 2 + 2
    seen = 0
    for fig in figures:
        ax = fig.axes[0]
        for line in ax.get_lines():
            strategy = line.get_label().split(":")[0]
            if strategy.startswith("_"):
                continue
            assert to_hex(line.get_color()) == report.strategy_colour(strategy), (ax.get_title(), strategy)
            seen += 1
        for band, line in zip(ax.collections, [x for x in ax.get_lines() if not x.get_label().startswith("_")], strict=False):  # strict=False: more labelled curves than bands (not every curve has one)
            assert to_hex(band.get_facecolor()[0]) == to_hex(line.get_color())  # a band is its curve's colour
    assert seen == 3 * 6 + 2 * 2
    names = list(report.STRATEGY_COLOURS)
    assert report.strategy_colour("top_lp_ft+wise_0.5") == report.strategy_colour("top_lp_ft")
    assert report.strategy_colour("my_own") == report.strategy_colour("my_own") and names


def test_the_forest_plot_fits_the_page_and_explains_every_marker():
    """Two panels a row at a page's width, fonts of at least 9 pt, at most five x ticks a panel (no
    overlapping tick labels), and a legend entry for every marker and line, the hollow one included."""
    verdicts = pd.read_csv(ROOT / "results" / "standard" / "verdicts.csv")
    across = pd.read_csv(ROOT / "results" / "standard" / "across.csv")
    fig = across_module.forest_figure(verdicts, across)
    width, _ = fig.get_size_inches()
    assert width * 110 <= 900  # shown near its own size in a 1280-px window's text column
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == int((across.families >= 2).sum())
    fig.canvas.draw()
    for ax in panels:
        low, high = ax.get_xlim()
        assert len([t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]) <= 5
        assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 9
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert len(labels) == 5 and any("did not pass" in label for label in labels)
    assert any("pooled" in label for label in labels) and "minimum effect" in labels


def _hook():
    spec = importlib.util.spec_from_file_location("results_hook", ROOT / "docs" / "_hooks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_figure_on_a_page_links_to_its_full_size_png():
    hook = _hook()
    html = '<p><img alt="x" src="../results/standard/across_backbones.png" /></p><img src="logo.png" />'
    linked = hook.figure_links(html)
    assert linked == ('<p><a class="lrgroups-figure" href="../results/standard/across_backbones.png" title="open at '
                      'full size"><img alt="x" src="../results/standard/across_backbones.png" /></a></p>'
                      '<img src="logo.png" />')
    assert hook.figure_links(linked) == linked
