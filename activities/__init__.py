"""Side effects, one module per outside system: lock (Redis), ledger (Postgres), broker."""
