"""The ``ordersaga`` command line: one module per command group in ``cli/commands/``."""
