"""Executes every notebook in this folder headless (nbclient) and fails on the first error.

Usage: python notebooks/run_notebooks.py [NOTEBOOK ...]
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(paths: list[str]) -> int:
    notebooks = [Path(p) for p in paths] or sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    for path in notebooks:
        started = time.time()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        print(f"{path.name}: ok in {time.time() - started:.1f} s")
    print(f"{len(notebooks)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
