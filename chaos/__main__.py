"""`python -m chaos` from the repository root: see chaos/cli.py (`--help`)."""

from __future__ import annotations

import sys

from chaos.cli import main

if __name__ == "__main__":
    sys.exit(main())
