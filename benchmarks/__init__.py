"""The benchmark suite of lrgroups (run from a checkout: ``python -m benchmarks ...``).

With the environment variable ``LRGROUPS_IMPORTS_FILE`` set, every process that imports this package
adds the top-level modules it imported to that json list at exit
(:func:`benchmarks.environment.write_imported_modules`; :func:`benchmarks.environment.undeclared` reads
it). Unset, nothing is registered and nothing beyond the standard library's ``os`` is imported.
"""

import os

if os.environ.get("LRGROUPS_IMPORTS_FILE"):
    import atexit

    def _write_imports() -> None:
        import sys

        modules = list(sys.modules.items())  # before the import below adds its own
        from .environment import IMPORTS_ENV, write_imported_modules

        write_imported_modules(os.environ.get(IMPORTS_ENV) or os.devnull, dict(modules))

    atexit.register(_write_imports)
