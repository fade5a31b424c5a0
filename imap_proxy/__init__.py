"""imap-proxy: a client-quirk-aware IMAP proxy."""

__version__ = "0.1.0"
