"""An mkdocs hook: the committed figures under ``results/`` become files of the site (``results/<run>/<name>.png``),
so the benchmark pages show the plots the suite wrote, never copies of them; and every such figure on a page is
a link to its PNG, which the browser opens at its full size."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "results"
#: An image of a committed figure, and the link before it if it has one.
FIGURE = re.compile(r'(<a\b[^>]*>\s*)?(<img\b[^>]*\bsrc="([^"]*results/[^"]+\.png)"[^>]*>)')


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.glob("*/*.png")):
        files.append(File.generated(config, f"results/{path.relative_to(RESULTS).as_posix()}", abs_src_path=str(path)))
    return files


def figure_links(html: str) -> str:
    """``html`` with every figure of ``results/`` that is not a link already inside a link to itself."""
    return FIGURE.sub(lambda m: m.group(0) if m.group(1) else
                      f'<a class="lrgroups-figure" href="{m.group(3)}" title="open at full size">{m.group(2)}</a>', html)


def on_page_content(html: str, page, config, files) -> str:
    return figure_links(html)
