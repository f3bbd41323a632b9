"""`python -m handles` and the `handles` console script."""

from handles._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
