"""Benchmark: bench/create.py's figures while another process keeps the disk busy.

    .venv/bin/python bench/create_busy.py [--runs 5]
Writes bench/results/create-busy.md (and .json). Asserts nothing.
"""

from __future__ import annotations

from create import main

if __name__ == "__main__":
    main(busy=True)
