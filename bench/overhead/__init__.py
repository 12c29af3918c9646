"""Proxy overhead: the same instant backend reached directly and through a router (docs/benchmarks.md)."""
