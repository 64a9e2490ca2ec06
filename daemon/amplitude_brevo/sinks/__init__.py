"""Consumers that write to Brevo, each under the rate budget of the bucket it spends."""
