"""The `ebr` command line: short drivers over the library packages."""
