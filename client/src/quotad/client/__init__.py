"""Thin clients for the quotad daemon."""
