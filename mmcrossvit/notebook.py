"""The walkthrough notebook (final_pipeline.ipynb) executed against a finished run, written beside
its results as an .ipynb with outputs and an HTML copy that opens in any browser.

    python -m mmcrossvit.notebook --dataset datasets/demo       # what `make demo` does last
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .paths import DATABASE_ROOT, OUTPUTS, RunLayout
from .storage import atomic_path, changed_since

NOTEBOOK = Path(__file__).resolve().parents[1] / "final_pipeline.ipynb"
PARAMETERS_TAG = "parameters"


def executed(run: RunLayout, notebook: Path = NOTEBOOK, timeout: int = 600):
    """The notebook (nbformat node) run against `run`: its parameters cell set to the run's paths."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(notebook, as_version=4)
    params = next(c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", []))
    params.source = (f"DATASET = {str(run.dataset)!r}\nNAME = {run.name!r}\nOUTPUTS = {str(run.outputs)!r}\n"
                     f"DATABASE_ROOT = {str(run.database_root)!r}\nNUM_SHOWN = 5")
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return nb


def write(run: RunLayout, notebook: Path = NOTEBOOK) -> tuple[Path, Path]:
    """Execute the notebook against `run`; write outputs/<name>/final_pipeline.{ipynb,html}. A run
    whose files have not changed since they were written keeps them (nothing is rewritten)."""
    import nbformat
    from nbconvert import HTMLExporter
    ipynb, html = run.out / notebook.name, run.out / f"{notebook.stem}.html"
    if html.exists() and ipynb.exists() and not changed_since(
            min(ipynb.stat().st_mtime, html.stat().st_mtime), run.out, run.database,
            ignore={ipynb.name, html.name}) and notebook.stat().st_mtime < html.stat().st_mtime:
        return ipynb, html
    nb = executed(run, notebook)
    with atomic_path(ipynb) as tmp:
        nbformat.write(nb, tmp)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)  # images inline: one self-contained file
    with atomic_path(html) as tmp:
        tmp.write_text(body)
    return ipynb, html


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder of the finished run")
    p.add_argument("--name", help="run name (default: dataset folder name)")
    p.add_argument("--outputs", type=Path, default=OUTPUTS, help=f"root of per-run outputs (default: {OUTPUTS})")
    p.add_argument("--database-root", type=Path, default=DATABASE_ROOT,
                   help=f"root of the spatial databases (default: {DATABASE_ROOT})")
    a = p.parse_args(argv)
    ipynb, html = write(RunLayout.create(a.dataset, a.name, a.outputs, a.database_root))
    print(f"notebook: {html} (executed: {ipynb})")


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
