"""The web console: ``agentbox serve`` at ``/`` for people, built on the service's public API only.

=============  ====================================================================================
``pages``      the routes: sign-in/out (cookie), and one server-rendered page per view
``session``    the cookie and its CSRF rules (also used by the service's auth middleware)
``templates``  jinja2 pages; ``static`` the scripts, styles and vendored xterm.js (no CDN: air-gapped)
=============  ====================================================================================

The pages are shells: what they show comes from ``/v1`` (the same API, the same token, through the
cookie), fetched by the small scripts in ``static``. The server side only knows who is signed in.
"""

from __future__ import annotations

from agentbox.service.console.pages import console_routes

__all__ = ["console_routes"]
