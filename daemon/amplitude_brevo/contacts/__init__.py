"""Contacts: the Brevo attribute model, the profile folder and the contact outbox."""
