"""Runs a `PipelineJob` on this machine the way Azure ML runs it (see runner.py)."""
