"""An mkdocs hook: the committed figures under ``results/`` become files of the site (``results/<run>/<name>.png``),
so the benchmark pages show the plots the suite wrote, never copies of them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "results"


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.glob("*/*.png")):
        files.append(File.generated(config, f"results/{path.relative_to(RESULTS).as_posix()}", abs_src_path=str(path)))
    return files
