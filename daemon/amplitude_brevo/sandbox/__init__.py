"""Loopback simulators of Amplitude and Brevo, and the deterministic data they serve."""
