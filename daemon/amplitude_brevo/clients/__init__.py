"""HTTP clients of the outside APIs (Amplitude) and shared HTTP settings."""
