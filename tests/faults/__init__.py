"""Fault tests: the real `clerk-sync serve`, a sender that behaves like Svix, and faults."""
