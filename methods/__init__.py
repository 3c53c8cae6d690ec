"""Continual-learning methods, one file each, auto-discovered on first use of the registry."""
