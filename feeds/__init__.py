"""Processes that feed the saga from outside: the broker's trade events (listener, delivery as
signals) and the market-data feed (quotes into Redis)."""
