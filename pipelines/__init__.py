"""The pipeline (definition/), its local runner (local/) and the commands (submit, deploy, publish)."""
