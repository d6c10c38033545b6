"""The demo service: ``create_app()`` in :mod:`examples.demo.app`; ``make demo`` serves it."""
