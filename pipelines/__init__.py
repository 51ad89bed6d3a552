"""Pipeline factory, Azure submit CLI and local runner for maap-finetune."""
