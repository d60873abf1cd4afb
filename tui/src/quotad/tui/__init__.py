"""quotad TUI placeholder."""
