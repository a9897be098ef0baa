"""Shipped policy profiles and Cedar policies, found with importlib.resources."""
