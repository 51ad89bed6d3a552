"""What is submitted, built offline: the input catalogue, settings resolved once, the DSL wiring, the lint."""
