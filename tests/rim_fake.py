"""A fake NVIDIA RIM service on 127.0.0.1 (``GET /v1/rim/<RIM ID>``, answering JSON whose ``rim``
is the base64 of the RIM's XML, as NVIDIA's service does): a real threaded HTTP server
(``http_fake.RouteServer``) that records every path asked."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json

from http_fake import RouteServer

PREFIX = "/v1/rim/"


class FakeRimService(RouteServer):
    NOT_FOUND = (404, b'{"error": "RIM not found"}', {"Content-Type": "application/json"})

    @property
    def base_url(self) -> str:
        """What ``cas serve --nvidia-rim`` is given."""
        return self.url + PREFIX

    def serve_rim(self, rim_id: str, xml: bytes) -> str:
        """Serve ``xml`` as the RIM ``rim_id``; returns its path."""
        body = {
            "id": rim_id,
            "rim": base64.b64encode(xml).decode(),
            "sha256": hashlib.sha256(xml).hexdigest(),
            "last_updated": "2025-01-01T00:00:00",
        }
        path = PREFIX + rim_id
        self.route(path, json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        return path


def fake_rim_service() -> contextlib.AbstractContextManager[FakeRimService]:
    """A running :class:`FakeRimService`, shut down on exit."""
    return FakeRimService.running()
