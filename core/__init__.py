"""The core every layer stands on: settings, money, errors, keys, the Postgres and Temporal
connections, the broker client. It imports nothing of the project above it."""
