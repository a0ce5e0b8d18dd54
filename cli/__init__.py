"""actgeom.cli: the command line, a thin client of actgeom.core."""
