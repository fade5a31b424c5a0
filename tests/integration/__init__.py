"""Integration tests against real servers (a private Dovecot started by the fixtures)."""
