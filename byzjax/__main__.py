"""``python -m byzjax``: the same as the ``byzjax`` command."""

from byzjax.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
