"""Brevo contacts: the attribute model and value conversion, profiles, the contact outbox."""
