"""python-dockerflow's ``dockerflow.flask.app`` module path, kept for imports.

``has_flask_login`` tells whether Flask-Login is installed; setting it to ``False`` (as
python-dockerflow's tests do) leaves the user id out of ``request.summary``.
"""

from __future__ import annotations

import importlib.util

from werkzeug.exceptions import InternalServerError

from ._extension import Dockerflow

#: Whether Flask-Login can be imported; the extension reads it on each request.
has_flask_login: bool = importlib.util.find_spec("flask_login") is not None


class HeartbeatFailure(InternalServerError):
    """python-dockerflow's exception for a failing heartbeat, kept for imports and handlers.

    The extension does not raise it: a failing ``/__heartbeat__`` returns its JSON response
    with the failure status directly.
    """


__all__ = ["Dockerflow", "HeartbeatFailure", "has_flask_login"]
