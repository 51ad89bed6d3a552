"""Capacity check: the base model's parameter count (parameters.py), the step-cost lines (step_costs.json, written by
benchmarks/scale.py), Azure VM sizes (vm_sizes.json) and the prediction against them (check.py)."""
