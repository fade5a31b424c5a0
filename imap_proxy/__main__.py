"""`python -m imap_proxy`: the same command line as the `imap-proxy` script.

How this works: it hands `sys.argv[1:]` to `imap_proxy.cli.main` and exits with its code.
"""

from __future__ import annotations

from imap_proxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
