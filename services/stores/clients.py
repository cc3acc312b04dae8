"""The OpenID Connect clients read through the DB-API driver alone, as users are.

The policy, login and token services look a client up by its id; like the user
reader (services/stores/users.py) this spares the policy and login processes
SQLAlchemy's heap. Clients are written only through SQLAlchemy, by the admin
CLI and `make up` (services/stores/oauth_clients.py).
"""

from __future__ import annotations

import logging

from services.domain.clients import ClientRecord, record_of, valid_client_id
from services.stores.driver import DriverTable

log = logging.getLogger("zhiva")

CLIENT_COLUMNS = (
    "client_id",
    "secret_hash",
    "redirect_uris",
    "post_logout_redirect_uris",
    "created_at",
)


class ClientTable(DriverTable):
    """Reads one client's row; `url` is the services' DATABASE_URL (SQLAlchemy's spelling)."""

    table = "oauth_clients"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._query = (
            f"SELECT {', '.join(CLIENT_COLUMNS)} FROM oauth_clients "  # noqa: S608
            f"WHERE client_id = {self.placeholder}"
        )

    def find(self, client_id: str) -> ClientRecord | None:
        """The client's record, None when there is no such client (or its row cannot be
        read: then it is logged, and the client is refused as unknown); a database error
        is raised."""
        if not valid_client_id(client_id):
            return None  # never stored, so not worth a query
        row = self._fetch(self._query, (client_id,))
        if row is None:
            return None
        try:
            return record_of(*row)
        except ValueError as error:
            log.error("oauth_clients row of %r is malformed: %s", client_id, error)
            return None
