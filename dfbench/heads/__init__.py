"""Readouts on top of frozen features: zero-shot matchers, trained probes and heads."""
