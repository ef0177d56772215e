"""``python -m cacheorm``: the command line (``python -m cacheorm --help``)."""

from __future__ import annotations

from cacheorm._cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m cacheorm"))
