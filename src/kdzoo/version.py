"""kdzoo's version, in a module of its own: the package, the run summaries, the teacher store
and the command line read it from here, and pyproject.toml takes it from here too."""
__version__ = "0.1.0"
