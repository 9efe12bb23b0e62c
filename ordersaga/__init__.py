"""Order-execution saga for overseas stock trading, orchestrated by Temporal."""

__version__ = "0.1.0"
