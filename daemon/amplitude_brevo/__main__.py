"""`python -m amplitude_brevo` is the `amplitude-brevo` command."""

from .cli import main

raise SystemExit(main())
