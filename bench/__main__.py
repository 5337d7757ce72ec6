"""``python -m bench``; ``main(argv)`` is also what ``campaigns bench`` calls."""

from __future__ import annotations

import sys

from bench.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
