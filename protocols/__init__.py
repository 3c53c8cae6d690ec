"""Protocols: datasets, class names, prompt templates, suites and the metrics computed on run records."""
