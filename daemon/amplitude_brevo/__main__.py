"""`python -m amplitude_brevo` is the `amplitude-brevo` command."""

from .cli import main

if __name__ == "__main__":  # importing this module (e.g. by a spawned process) must not run the CLI
    raise SystemExit(main())
