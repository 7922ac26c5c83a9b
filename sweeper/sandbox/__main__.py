"""`python -m sweeper.sandbox`: the sandbox node + provider in one process (see combined.py)."""

from __future__ import annotations

import sys

from sweeper.sandbox.combined import main

if __name__ == "__main__":
    sys.exit(main())
