"""lenet's command lines: each module has main(argv=None) -> exit status (lenet-NAME, python -m lenet NAME)."""
