"""Run the notebooks and save them with their outputs, so that they show their
plots where they are read (a repository page, a docs site).

    python notebooks/execute.py                 # every notebooks/*.ipynb
    python notebooks/execute.py real_photos     # some of them (names or paths)

Each notebook runs top to bottom in the ``python3`` kernel (the interpreter
running this script, as in tests/test_notebooks.py) with notebooks/ as its
working directory; a notebook that fails is left unchanged and the script
exits non-zero. Figures are kept as PNGs at :data:`FIGURE_DPI`; the cells'
execution timestamps are dropped, so a re-run changes only what the outputs show.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent
#: Resolution of the saved figures (matplotlib's inline backend).
FIGURE_DPI = 72
CELL_TIMEOUT_S = 1200
#: matplotlib's settings in the kernel (the notebooks themselves are not changed; the
#: kernel reads them from a temporary MATPLOTLIBRC).
MATPLOTLIBRC = f"figure.dpi: {FIGURE_DPI}\nsavefig.dpi: {FIGURE_DPI}\n"


def execute(path: Path) -> nbformat.NotebookNode:
    """``path`` run top to bottom; its cells hold their outputs."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = smaller_png(out["data"]["image/png"])
    return nb


def smaller_png(data: str) -> str:
    """A base64 PNG re-encoded with at most 256 colours where that is smaller
    (noisy renders in a figure compress poorly as true colour)."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data)
    with Image.open(io.BytesIO(raw)) as im:
        quantized = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                               dither=Image.Dither.NONE)
        buf = io.BytesIO()
        quantized.save(buf, format="PNG", optimize=True)
    smaller = buf.getvalue()
    return base64.b64encode(smaller).decode() + "\n" if len(smaller) < len(raw) else data


def main(argv: list[str]) -> int:
    import os
    import tempfile

    rc_dir = tempfile.mkdtemp(prefix="invpbr-matplotlibrc-")
    (Path(rc_dir) / "matplotlibrc").write_text(MATPLOTLIBRC)
    os.environ["MATPLOTLIBRC"] = rc_dir
    names = argv or [p.name for p in sorted(NOTEBOOKS_DIR.glob("*.ipynb"))]
    failed = []
    for name in names:
        path = Path(name) if Path(name).suffix == ".ipynb" and Path(name).exists() \
            else NOTEBOOKS_DIR / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        start = time.perf_counter()
        try:
            nb = execute(path)
        except nbclient.exceptions.CellExecutionError as e:
            print(f"{path.name}: FAILED\n{e}", file=sys.stderr)
            failed.append(path.name)
            continue
        nbformat.write(nb, path)
        images = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code"
                     for out in c.get("outputs", []))
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {images} figures, "
              f"{path.stat().st_size / 1024:.0f} KiB", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
