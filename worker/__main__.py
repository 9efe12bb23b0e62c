"""``python -m worker [--queues orders,broker]``: the same as ``ordersaga worker``."""

from __future__ import annotations

from ordersaga.cli import main

if __name__ == "__main__":
    import sys

    main(["worker", *sys.argv[1:]])
