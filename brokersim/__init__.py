"""An Alpaca-v2-compatible broker simulator with fault injection (docs/BROKER-SIM.md)."""
