"""WSGI entry point for the lab's Glance sites under gunicorn.

oslo.config may look at ``sys.argv``; under gunicorn that is gunicorn's own
command line. Hide it before glance builds its application.
"""

import sys

sys.argv = sys.argv[:1]

from glance.wsgi.api import application  # noqa: F401
