"""Provider wire formats."""
