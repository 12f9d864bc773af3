"""``python -m ntpy`` runs the ``ntpy`` command."""

from ntpy.cli.main import main

raise SystemExit(main())
