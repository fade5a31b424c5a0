"""Test support code shared by the suite: a private Dovecot (dovecot.py) and TLS (tls.py).

How this works: plain helper modules, imported by tests/conftest.py fixtures and by tests;
nothing here is collected by pytest.
"""
