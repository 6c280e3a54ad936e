"""Who may decide: responders' tokens and JWTs, and the signed assertions the workflow checks."""
