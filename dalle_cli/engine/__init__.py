"""The runtime pieces every family's pipeline shares: per-image noise, a stage's sampling loop, and offloading."""
