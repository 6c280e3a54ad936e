"""`python -m stanch ...` runs the CLI; `stanch up` starts its children this way."""

from stanch.cli.main import run

if __name__ == "__main__":
    run()
