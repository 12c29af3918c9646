"""The control plane: discovery, metrics polling, health and circuit breaking."""
