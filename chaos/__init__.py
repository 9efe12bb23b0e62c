"""The chaos harness (issue 5): orders under crashes, broker faults and store restarts, then a
check of every invariant in DESIGN.md. Entry point: :func:`chaos.harness.run_chaos`;
CLI: ``ordersaga chaos``; docs/CHAOS.md describes the fault kinds and the last long run.
"""
