"""``python -m bench``: the write-path benchmark (see ``bench.write_path``)."""

from __future__ import annotations

import sys

from bench.write_path import main

if __name__ == "__main__":
    sys.exit(main())
