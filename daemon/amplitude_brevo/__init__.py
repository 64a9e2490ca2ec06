"""amplitude-brevo: Amplitude product analytics into Brevo marketing automation."""

__version__ = "0.1.0"
