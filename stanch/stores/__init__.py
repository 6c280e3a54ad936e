"""What Stanch keeps on disk across incidents: the regression suite of repro cases."""
