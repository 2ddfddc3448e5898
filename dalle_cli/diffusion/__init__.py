"""Noise schedules and samplers as pure functions over tensors and denoiser callables. Never imports models."""
