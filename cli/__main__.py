"""``python -m cli ARGS``: the same as the ``ordersaga`` console script."""

from cli.main import main

main()
