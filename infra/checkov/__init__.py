"""maap-finetune custom checkov checks (loaded by infra/scan.py)."""
