"""The command lines, one module each, exposing main(argv=None) -> exit status."""
