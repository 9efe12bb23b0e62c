"""The local development stack: the Temporal dev server, the simulator, feeds, workers."""
