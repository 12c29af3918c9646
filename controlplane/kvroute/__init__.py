"""kvroute: a KV-cache-aware router for vLLM fleets."""
