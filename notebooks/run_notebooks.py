"""Executes every notebook in this folder headless (nbclient) and fails on the first error.

Usage: python notebooks/run_notebooks.py [--save] [NOTEBOOK ...]

--save writes the executed notebooks (with their plots) back, so that the committed copies show what a run
looks like; CI runs without it and leaves the tree untouched.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(args: list[str]) -> int:
    save = "--save" in args
    paths = [a for a in args if a != "--save"]
    notebooks = [Path(p) for p in paths] or sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    for path in notebooks:
        started = time.time()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        if save:
            nbformat.write(nb, path)
        print(f"{path.name}: ok in {time.time() - started:.1f} s")
    print(f"{len(notebooks)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
