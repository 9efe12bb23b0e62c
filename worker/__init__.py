"""The worker process: settings, composition root (pools -> activity objects -> Worker)."""
