"""The OpenAPI description of the public endpoints (served at `GET /auth/openapi.json`).

It is user documentation as much as a test input: `tests/test_security_openapi.py`
runs schemathesis against the running stack with it, so every status and body
shape written here is one the services really answer.
"""

# ruff: noqa: E501 - long lines here are user-facing descriptions, clearer unbroken

from __future__ import annotations

from typing import Any

msg: dict[str, Any] = {"$ref": "#/components/schemas/Message"}


def jr(
    desc: str, schema: dict[str, Any] = msg, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = {"description": desc, "content": {"application/json": {"schema": schema}}}
    if headers:
        r["headers"] = headers
    return r


def html(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"text/html": {"schema": {"type": "string"}}}}


retry = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
auth_param = {
    "name": "Authorization",
    "in": "header",
    "required": False,
    "description": "`Bearer <token>`; the seed's bare `<token>` is accepted too.",
    "schema": {"type": "string"},
}
origin_param = {
    "name": "Origin",
    "in": "header",
    "required": False,
    "description": "Sent by browsers; a token bound to another origin is refused.",
    "schema": {"type": "string"},
}
share_id_param = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the share's id (32 hexadecimal digits)",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
token_errors = {
    "401": jr("`Missing Token` or `Token Expired`"),
    "403": jr(
        "`Invalid Token`: used, revoked, forged, wrong kind, wrong origin, user disabled or deleted"
    ),
    "503": jr("the token store (Redis) does not answer: nothing was granted", headers=retry),
}
SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "zhiva local PACS: token, login and policy services",
        "version": "1.0.0",
        "description": 'The public HTTPS endpoints behind nginx. JSON errors always have the shape `{"message": ...}`. '
        "Tokens are RS256 JWTs (public keys at `/auth/.well-known/jwks.json`). Every `/zhiva/...` request is judged by the "
        "policy service (nginx `auth_request`) before it reaches Orthanc; see the project's README.md and docs/PROTOCOLS.md.",
    },
    "paths": {
        "/auth/generate-token": {
            "post": {
                "summary": "Create or overwrite a user and answer its one-off auth token (admin password required)",
                "operationId": "generateToken",
                "parameters": [origin_param],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/GenerateTokenRequest"}
                        }
                    },
                },
                "responses": {
                    "200": jr(
                        "the auth token",
                        {
                            "type": "object",
                            "required": ["token"],
                            "properties": {"token": {"type": "string"}},
                        },
                    ),
                    "400": jr(
                        "`Invalid admin password`, `User already exists`, `User doesn't exists`, `Name not valid`, `username not valid`, `Invalid data`, or a weak user password"
                    ),
                    "403": jr("`Origin not allowed`"),
                    "413": jr("body larger than 64 KB"),
                    "429": jr("too many wrong admin passwords from this address", headers=retry),
                    "503": jr("the token store does not answer", headers=retry),
                },
            }
        },
        "/auth/generate-access-token": {
            "post": {
                "summary": "Redeem a one-off auth token (exactly once) for an access token and a refresh token",
                "operationId": "generateAccessToken",
                "parameters": [auth_param, origin_param],
                "responses": {
                    "200": {
                        "description": "the refresh token as the body; the access token in the `Authorization` response header",
                        "headers": {
                            "Authorization": {
                                "description": "`Bearer <access token>`",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **token_errors,
                },
            }
        },
        "/auth/refresh-token": {
            "post": {
                "summary": "A new access token for a refresh token",
                "operationId": "refreshToken",
                "parameters": [auth_param, origin_param],
                "responses": {
                    "200": {
                        "description": "the new access token in the `Authorization` response header; empty body",
                        "headers": {
                            "Authorization": {
                                "description": "`Bearer <access token>`",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **token_errors,
                },
            }
        },
        "/auth/shares": {
            "post": {
                "summary": "Share a study: a link (and a token) that reads that one study until it expires or is revoked",
                "description": "An editor's or admin's access token (a zhiva access token or an OpenID Connect one); the user's rights now count, not only the token's. The study must be stored in the PACS. The answer's `url` is the link to hand out: it opens the viewer on the study without an account (asking for the PIN first, when there is one). The `token` reads the study's DICOMweb (`/zhiva/pacs/studies/<UID>/...`) and nothing else; it is shown only here.",
                "operationId": "createShare",
                "parameters": [auth_param, origin_param],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ShareRequest"}
                        }
                    },
                },
                "responses": {
                    "201": jr("the new share", {"$ref": "#/components/schemas/ShareCreated"}),
                    "400": jr(
                        "a bad `study`, `expiresIn` or `pin`, or a body that is not a JSON object"
                    ),
                    "401": jr("`Missing Token` or `Token Expired`"),
                    "403": jr(
                        "`Invalid Token` (revoked, forged, wrong kind, wrong origin, user disabled or deleted), `Viewers cannot share studies`, or `Origin not allowed`"
                    ),
                    "404": jr("`Study not found` in the PACS"),
                    "413": jr("body larger than 64 KB"),
                    "503": jr(
                        "the token store, the database or the PACS does not answer", headers=retry
                    ),
                },
            },
            "get": {
                "summary": "The caller's shares (an admin's: every share), the newest first; never a token or a PIN",
                "operationId": "listShares",
                "parameters": [auth_param, origin_param],
                "responses": {
                    "200": jr(
                        "the shares",
                        {
                            "type": "object",
                            "required": ["shares"],
                            "properties": {
                                "shares": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Share"},
                                }
                            },
                        },
                    ),
                    "401": jr("`Missing Token` or `Token Expired`"),
                    "403": jr("`Invalid Token` or `Origin not allowed`"),
                    "503": jr("the token store or the database does not answer", headers=retry),
                },
            },
        },
        "/auth/shares/{id}": {
            "delete": {
                "summary": "Revoke a share: its link and every token it gave stop working within 5 seconds",
                "description": "Its creator or an admin; anyone else is told it does not exist. Revoking a revoked share again is a 204 too.",
                "operationId": "revokeShare",
                "parameters": [share_id_param, auth_param, origin_param],
                "responses": {
                    "204": {"description": "revoked"},
                    "401": jr("`Missing Token` or `Token Expired`"),
                    "403": jr("`Invalid Token` or `Origin not allowed`"),
                    "404": jr("`Share not found` (or not the caller's)"),
                    "503": jr("the token store or the database does not answer", headers=retry),
                },
            }
        },
        "/auth/share/{id}": {
            "get": {
                "summary": "A share's link: opens the viewer on the shared study, after its PIN when it has one",
                "operationId": "openShare",
                "parameters": [share_id_param],
                "responses": {
                    "200": html("the PIN form"),
                    "303": {
                        "description": "to the viewer in share mode (`/viewer/share/viewer?StudyInstanceUIDs=<UID>&token=<share token>`)",
                        "headers": {
                            "Location": {
                                "description": "the viewer's address",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "404": html("no such link"),
                    "410": html("the link was revoked or has expired"),
                    "429": html("locked for a day after 5 wrong PINs"),
                    "503": html("the token store or the database does not answer"),
                },
            }
        },
        "/auth/.well-known/jwks.json": {
            "get": {
                "summary": "The public key(s) that verify every token",
                "operationId": "jwks",
                "responses": {
                    "200": jr(
                        "a JSON Web Key Set",
                        {
                            "type": "object",
                            "required": ["keys"],
                            "properties": {
                                "keys": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["kty", "kid", "alg", "n", "e"],
                                        "properties": {
                                            "kty": {"type": "string", "enum": ["RSA"]},
                                            "kid": {"type": "string"},
                                            "alg": {"type": "string", "enum": ["RS256"]},
                                            "use": {"type": "string"},
                                            "n": {"type": "string"},
                                            "e": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        },
                    )
                },
            }
        },
        "/auth/openapi.json": {
            "get": {
                "summary": "This description",
                "operationId": "openapi",
                "responses": {"200": jr("OpenAPI 3 document", {"type": "object"})},
            }
        },
        "/auth/token": {
            "get": {
                "summary": "The admin page: step 1 (owner name, username, rights, admin password)",
                "operationId": "tokenPage",
                "responses": {"200": html("the form")},
            }
        },
        "/auth/sign-in": {
            "get": {
                "summary": "The viewer's sign-in page",
                "operationId": "signInPage",
                "parameters": [
                    {
                        "name": "return_uri",
                        "in": "query",
                        "required": True,
                        "description": "where to send the user back; must be an allowed origin",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "response_type",
                        "in": "query",
                        "required": False,
                        "description": 'JSON `{"type":"authToken","returnParams":{...}}`',
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": html("the sign-in form"),
                    "400": html("return_uri missing or not allowed, or a bad response_type"),
                    "503": html("the token store does not answer"),
                },
            }
        },
        "/auth/sign-user": {
            "post": {
                "summary": "Sign a user in from a script or the viewer: an auth token bound to the referer's origin",
                "operationId": "signUser",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/SignUserRequest"}
                        }
                    },
                },
                "responses": {
                    "200": jr(
                        "the auth token",
                        {
                            "type": "object",
                            "required": ["token"],
                            "properties": {"token": {"type": "string"}},
                        },
                    ),
                    "400": jr("`Invalid data` for every failure (no hint which field was wrong)"),
                    "413": jr("body larger than 64 KB"),
                    "429": jr("too many failed sign-ins from this client address", headers=retry),
                    "503": jr("the token store does not answer", headers=retry),
                },
            }
        },
        "/auth/healthz/{service}": {
            "get": {
                "summary": "Health of one service (its Redis and database)",
                "operationId": "health",
                "parameters": [
                    {
                        "name": "service",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["token", "login", "policy"]},
                    }
                ],
                "responses": {
                    "200": jr("healthy", {"$ref": "#/components/schemas/Health"}),
                    "404": jr("no such service"),
                    "503": jr("degraded", {"$ref": "#/components/schemas/Health"}),
                },
            }
        },
        "/zhiva/pacs/studies": {
            "get": {
                "summary": "DICOMweb QIDO-RS (Orthanc), after the policy service's decision",
                "description": "Every `/zhiva/...` path is Orthanc with the prefix stripped. A token travels in the `token` header, `Authorization: Bearer`, or (GET only) `?token=`. Viewers read; editors also write (STOW, upload, modify, delete); admins also use system routes. `/tools/execute-script` is refused for every token.",
                "operationId": "qidoStudies",
                "parameters": [
                    auth_param,
                    {
                        "name": "token",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    origin_param,
                ],
                "responses": {
                    "200": {
                        "description": "matching studies",
                        "content": {
                            "application/dicom+json": {"schema": {"type": "array"}},
                            "application/json": {"schema": {"type": "array"}},
                        },
                    },
                    "401": {
                        "description": "no token, or an expired one",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "403": {
                        "description": "a token that does not open this route",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Message": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
            },
            "Health": {
                "type": "object",
                "required": ["service", "status", "checks"],
                "properties": {
                    "service": {"type": "string"},
                    "status": {"type": "string", "enum": ["ok", "degraded"]},
                    "checks": {
                        "type": "object",
                        "properties": {
                            "redis": {"type": "boolean"},
                            "database": {"type": "boolean"},
                        },
                    },
                },
            },
            "GenerateTokenRequest": {
                "type": "object",
                "required": ["name", "username", "password"],
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "the token owner's display name (1-120 printable characters)",
                    },
                    "username": {
                        "type": "string",
                        "description": "lower-case ASCII after NFKC folding: `[a-z0-9][a-z0-9._@-]{0,63}`; look-alikes from other scripts are refused",
                    },
                    "password": {"type": "string", "description": "the admin password"},
                    "canEditResource": {"type": "boolean", "default": False},
                    "userPassword": {
                        "type": "string",
                        "description": "the user's password (8+ characters, upper, lower, digit, special) when the user is created or overwritten",
                    },
                    "createUserIfNotExists": {"type": "boolean", "default": False},
                },
            },
            "ShareRequest": {
                "type": "object",
                "required": ["study"],
                "properties": {
                    "study": {
                        "type": "string",
                        "description": "the StudyInstanceUID (digits and dots, up to 64)",
                    },
                    "expiresIn": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 31536000,
                        "default": 604800,
                        "description": "seconds the share lasts: 7 days by default, a year at most",
                    },
                    "pin": {
                        "type": "string",
                        "pattern": "^[0-9]{4,12}$",
                        "description": "4 to 12 digits the link asks for before it opens (optional)",
                    },
                },
            },
            "ShareCreated": {
                "type": "object",
                "required": ["id", "url", "token", "expiresAt"],
                "properties": {
                    "id": {"type": "string"},
                    "url": {"type": "string", "description": "the link to hand out"},
                    "token": {"type": "string", "description": "a share token (JWT, kind `share`)"},
                    "expiresAt": {"type": "string", "format": "date-time"},
                },
            },
            "Share": {
                "type": "object",
                "required": [
                    "id",
                    "study",
                    "createdBy",
                    "createdAt",
                    "expiresAt",
                    "revoked",
                    "pin",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "study": {"type": "string"},
                    "createdBy": {
                        "type": "string",
                        "description": "a username, or `zhiva-admin` for the CLI",
                    },
                    "createdAt": {"type": "string", "format": "date-time"},
                    "expiresAt": {"type": "string", "format": "date-time"},
                    "revoked": {"type": "boolean"},
                    "pin": {"type": "boolean", "description": "whether the link asks for a PIN"},
                },
            },
            "SignUserRequest": {
                "type": "object",
                "required": ["username", "password", "referer"],
                "properties": {
                    "username": {"type": "string"},
                    "password": {"type": "string"},
                    "referer": {
                        "type": "string",
                        "description": "the viewer's URL; its origin must be allowed and the token is bound to it",
                    },
                },
            },
        }
    },
}
