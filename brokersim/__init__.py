"""An overseas-broker simulator speaking a subset of Alpaca Trading API v2."""
