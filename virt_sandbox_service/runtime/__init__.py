"""Running sandboxes: start (readiness, console, exit status), stop, execute."""
