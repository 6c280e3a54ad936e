"""`python -m stanch ...` runs the CLI; `stanch up` starts its children this way."""

from stanch.cli.main import app

if __name__ == "__main__":
    app(prog_name="stanch")
