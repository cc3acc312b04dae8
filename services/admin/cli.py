"""`zhiva-admin`: manage users, OpenID Connect clients, share links and DICOM modalities from a
shell on the server.

Settings load exactly as the services load them (`CONFIG_DIR/.env`, then the
environment), so the CLI works on the database the services use. Passwords
are read from a hidden prompt or from standard input (`--password-stdin`),
never from the command line, where other users could see them in `ps`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from infra import dicom_ca
from services.domain.clients import ClientError
from services.domain.origins import OriginPolicy
from services.domain.passwords import STRONG_PASSWORD_RULE
from services.domain.shares import (
    DEFAULT_LIFETIME,
    ShareError,
    check_pin,
    check_study_uid,
    issue_share_token,
    parse_duration,
)
from services.domain.tokens import TokenCodec
from services.settings import Settings, SettingsError, load_settings
from services.stores.accounts import (
    AccountError,
    find_user,
    revoke_all_tokens,
    save_user,
    set_disabled,
)
from services.stores.db import Database
from services.stores.models import User
from services.stores.oauth_clients import add_client, list_clients, remove_client
from services.stores.orthanc import OrthancResources, OrthancUnavailable
from services.stores.revocation import RevocationStore, StoreUnavailable, redis_client
from services.stores.shares import (
    CLI_CREATOR,
    create_share,
    find_share,
    iso,
    list_shares,
    listing,
    revoke_share,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@contextmanager
def _session(settings: Settings | None = None) -> Iterator[Session]:
    """A session on the configured database; configuration problems become clear messages."""
    if settings is None:
        settings = _settings()
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            yield session
    except (AccountError, ClientError) as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"database {database.engine.url.render_as_string(hide_password=True)}: "
            f"{type(error).__name__} (is it set up? `make up` applies the migrations)"
        ) from None
    finally:
        database.engine.dispose()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input")
        return password
    click.echo(STRONG_PASSWORD_RULE + ".")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _user(session: Session, username: str) -> User:
    user = find_user(session, username)
    if user is None:
        raise click.ClickException(f"no user {username!r}")
    return user


password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@click.group(help="Manage the users and the DICOM modalities of the zhiva local PACS.")
def main() -> None:
    pass


@main.command("create-user")
@click.argument("username")
@click.option("--name", required=True, help="The person's name, shown in tokens.")
@click.option(
    "--can-edit/--read-only",
    default=False,
    show_default=True,
    help="May upload, modify and delete PACS data.",
)
@click.option("--admin", "is_admin", is_flag=True, help="May also use Orthanc's system routes.")
@password_stdin
def create_user(
    username: str, name: str, can_edit: bool, is_admin: bool, password_stdin: bool
) -> None:
    """Create a user (refused when the username is taken)."""
    with _session() as session:
        if find_user(session, username) is not None:
            raise click.ClickException(f"user {username!r} exists; use reset-password")
        user = save_user(
            session,
            name=name,
            username=username,
            password=_read_password(password_stdin),
            can_edit=can_edit,
            is_admin=is_admin,
        )
        click.echo(f"created {user.username}")


@main.command("reset-password")
@click.argument("username")
@click.option(
    "--keep-tokens",
    is_flag=True,
    help="Leave the user's tokens working (by default they are revoked).",
)
@password_stdin
def reset_password(username: str, keep_tokens: bool, password_stdin: bool) -> None:
    """Set a new password; revokes the user's tokens unless --keep-tokens."""
    with _session() as session:
        user = _user(session, username)
        save_user(
            session,
            name=user.name,
            username=user.username,
            password=_read_password(password_stdin),
            can_edit=user.can_edit,
            is_admin=user.is_admin,
        )
        if not keep_tokens:
            revoke_all_tokens(session, user.username)
        click.echo(
            f"new password for {user.username}"
            + ("" if keep_tokens else "; its tokens are revoked")
        )


@main.command("list-users")
def list_users() -> None:
    """One line per user: username, rights, state, name."""
    with _session() as session:
        users = session.scalars(select(User).order_by(User.username)).all()
        if not users:
            click.echo("no users")
            return
        width = max(len("USERNAME"), *(len(u.username) for u in users))
        click.echo(f"{'USERNAME':<{width}}  {'RIGHTS':<6}  {'STATE':<8}  CREATED           NAME")
        for user in users:
            rights = "admin" if user.is_admin else "edit" if user.can_edit else "read"
            state = "disabled" if user.disabled else "enabled"
            created = user.created_at.strftime("%Y-%m-%d %H:%M") if user.created_at else "-"
            click.echo(
                f"{user.username:<{width}}  {rights:<6}  {state:<8}  {created:<16}  {user.name}"
            )


@main.command("disable-user")
@click.argument("username")
def disable_user(username: str) -> None:
    """Refuse the user's sign-in and revoke every token it holds."""
    with _session() as session:
        user = set_disabled(session, username, True)
        revoke_all_tokens(session, user.username)
        click.echo(f"disabled {user.username}; its tokens are revoked")


@main.command("enable-user")
@click.argument("username")
def enable_user(username: str) -> None:
    """Let a disabled user sign in again (its old tokens stay revoked)."""
    with _session() as session:
        user = set_disabled(session, username, False)
        click.echo(f"enabled {user.username}")


@main.command("revoke-tokens")
@click.argument("username")
def revoke_tokens(username: str) -> None:
    """Revoke every auth, access and refresh token of the user issued so far."""
    with _session() as session:
        user = revoke_all_tokens(session, username)
        click.echo(f"revoked every token of {user.username}")


@main.group(
    help="OpenID Connect clients: applications whose users sign in with these accounts "
    "(zhiva-viewer, the local viewer's, is registered by `make up`)."
)
def clients() -> None:
    pass


@clients.command("add")
@click.option(
    "--client-id", required=True, help="1 to 64 of the characters A-Z a-z 0-9 . _ - (unique)."
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    help="An https:// URI of an allowed origin the sign-in returns to, exactly; repeatable.",
)
@click.option(
    "--post-logout-redirect-uri",
    "post_logout_redirect_uris",
    multiple=True,
    help="Where a logout may return to (same rules); repeatable.",
)
@click.option(
    "--confidential",
    is_flag=True,
    help="A server-side client with a secret (printed once); by default a public one (PKCE).",
)
def add_oauth_client(
    client_id: str,
    redirect_uris: tuple[str, ...],
    post_logout_redirect_uris: tuple[str, ...],
    confidential: bool,
) -> None:
    """Register a client; prints {"client_id", "client_secret"} as JSON (the secret only for a
    confidential client, and only now: it is stored hashed)."""
    settings = _settings()
    policy = OriginPolicy(settings.origin_patterns)
    with _session(settings) as session:
        secret = add_client(
            session, client_id, redirect_uris, post_logout_redirect_uris, confidential, policy
        )
    answer = {"client_id": client_id}
    if secret is not None:
        answer["client_secret"] = secret
        click.echo("the client secret is shown only now; keep it secret", err=True)
    click.echo(json.dumps(answer))


@clients.command("list")
def list_oauth_clients() -> None:
    """One JSON object per line: client id, type (public or confidential), redirect URIs and
    post-logout redirect URIs. Never a secret, nor its hash."""
    with _session() as session:
        registered = list_clients(session)
    if not registered:
        click.echo("no clients registered", err=True)
    for client in registered:
        line = {
            "client_id": client.client_id,
            "type": "public" if client.is_public else "confidential",
            "redirect_uris": list(client.redirect_uris),
            "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        }
        click.echo(json.dumps(line))


@clients.command("remove")
@click.argument("client_id")
def remove_oauth_client(client_id: str) -> None:
    """Unregister CLIENT_ID; its users can no longer sign in through it."""
    with _session() as session:
        remove_client(session, client_id)
    click.echo(f"removed client {client_id}")


@main.group(
    help="Share links: a link that opens one study in the viewer, without an account, for a "
    "while (until it expires or is revoked). Needs the running stack (Orthanc, Redis)."
)
def shares() -> None:
    pass


def _read_pin(from_stdin: bool) -> str:
    if from_stdin:
        pin = sys.stdin.readline().strip()
        if not pin:
            raise click.ClickException("no PIN on standard input")
    else:
        # On stderr: stdout is the JSON answer.
        pin = click.prompt(
            "PIN (4 to 12 digits)", hide_input=True, confirmation_prompt=True, err=True
        )
    try:
        check_pin(pin)
    except ShareError as error:
        raise click.ClickException(str(error)) from None
    return pin


@shares.command("create")
@click.option("--study", "study_uid", required=True, help="The StudyInstanceUID to share.")
@click.option(
    "--expires",
    default=f"{DEFAULT_LIFETIME // 86400}d",
    show_default=True,
    help="How long the link works: seconds, or 90m, 12h, 7d, 2w (at most a year).",
)
@click.option("--pin", "ask_pin", is_flag=True, help="Ask for a PIN (hidden prompt).")
@click.option(
    "--pin-stdin", is_flag=True, help="Read the PIN from the first line of stdin (implies --pin)."
)
def create_share_link(study_uid: str, expires: str, ask_pin: bool, pin_stdin: bool) -> None:
    """Share a stored study; prints {"id", "url", "token", "expiresAt"} as JSON. The token is
    shown only now (the link mints its own); with a PIN, the link asks for it."""
    settings = _settings()
    try:
        uid = check_study_uid(study_uid)
        lifetime = parse_duration(expires)
    except ShareError as error:
        raise click.ClickException(str(error)) from None
    pin = _read_pin(pin_stdin) if ask_pin or pin_stdin else None
    orthanc = OrthancResources(settings.orthanc_http_port, settings.secret_key)
    try:
        study_id = orthanc.find_study(uid)
    except OrthancUnavailable:
        raise click.ClickException(
            f"Orthanc does not answer on 127.0.0.1:{settings.orthanc_http_port}: is the stack "
            "up (`make status`)?"
        ) from None
    finally:
        orthanc.close()
    if study_id is None:
        raise click.ClickException(f"no study {uid} in the PACS")
    with _session(settings) as session:
        share = create_share(
            session,
            study_uid=uid,
            study_id=study_id,
            created_by=CLI_CREATOR,
            lifetime=lifetime,
            pin=pin,
        )
    token, _claims = issue_share_token(TokenCodec.from_settings(settings, can_sign=True), share)
    answer = {
        "id": share.id,
        "url": f"{settings.public_base_url}/auth/share/{share.id}",
        "token": token,
        "expiresAt": iso(share.expires_at),
    }
    click.echo(json.dumps(answer))


@shares.command("list")
def list_share_links() -> None:
    """One JSON object per line, the newest first: id, study, creator, dates, revoked, whether
    it has a PIN. Never a token, nor a PIN."""
    with _session() as session:
        found = list_shares(session, None)
    if not found:
        click.echo("no shares", err=True)
    for share in found:
        click.echo(json.dumps(listing(share)))


@shares.command("revoke")
@click.argument("share_id")
def revoke_share_link(share_id: str) -> None:
    """Revoke SHARE_ID: its link and every token it gave stop working within 5 seconds."""
    settings = _settings()
    client = redis_client(settings.redis_url)
    revocations = RevocationStore(
        client, settings.redis_key_prefix, keep_seconds=settings.longest_token_lifetime
    )
    try:
        with _session(settings) as session:
            share = find_share(session, share_id)
            if share is None:
                raise click.ClickException(f"no share {share_id!r}")
            revoke_share(session, share.id)
            # Before the commit: when Redis cannot take it, revoked_at is not written either.
            revocations.revoke(share.id, share.expires_at)
    except StoreUnavailable:
        raise click.ClickException(
            f"Redis does not answer on 127.0.0.1:{settings.redis_port}: is the stack up "
            "(`make status`)? Nothing was revoked"
        ) from None
    finally:
        client.close()
    click.echo(f"revoked share {share.id} of study {share.study_uid}")


@main.group(
    help="DICOM modalities allowed to store and query (C-STORE, C-FIND, C-MOVE, C-GET); "
    "C-ECHO needs no registration."
)
def modalities() -> None:
    pass


def _dicom_settings() -> Settings:
    # Only CONFIG_DIR matters here (the registry, the CA): no secret, no database.
    try:
        return load_settings(require_secrets=False)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


APPLY_NOTE = (
    "Orthanc applies it when it restarts (`make admin` restarts it; else at the next `make up`)"
)


@modalities.command("add")
@click.argument("aet")
@click.argument("host")
@click.option(
    "--port",
    type=int,
    default=dicom_ca.DEFAULT_MODALITY_PORT,
    show_default=True,
    help="The modality's own DICOM port, where Orthanc sends C-MOVE results.",
)
@click.option(
    "--certificate",
    is_flag=True,
    help="Also issue a client certificate and key signed by the stack's DICOM CA.",
)
def add_modality(aet: str, host: str, port: int, certificate: bool) -> None:
    """Register AET at HOST (an IPv4 address): both must match an association."""
    settings = _dicom_settings()
    try:
        modality = dicom_ca.Modality(
            dicom_ca.check_aet(aet), dicom_ca.check_host(host), dicom_ca.check_port(port)
        )
        with dicom_ca.registry_lock(settings):
            registered = dicom_ca.load_modalities(settings)
            for other in registered.values():
                if dicom_ca.same_aet(other.aet, modality.aet):
                    raise click.ClickException(
                        f"{other.aet} is registered already (host {other.host}, port "
                        f"{other.port}); `modalities remove {other.aet}` first to change it"
                    )
            if certificate:
                # Before the registration: a CA problem leaves the registry as it was.
                cert_path, key_path = dicom_ca.issue_client_certificate(
                    settings, modality.aet, modality.host
                )
            registered[modality.aet] = modality
            dicom_ca.save_modalities(settings, registered)
    except dicom_ca.DicomAccessError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"registered {modality.aet} at {modality.host} (port {modality.port})")
    if certificate:
        click.echo(f"client certificate: {cert_path}")
        click.echo(f"client private key: {key_path} (secret: give it to this modality only)")
        click.echo(f"the modality verifies the PACS with: {settings.trusted_certificates}")
    click.echo(APPLY_NOTE)


@modalities.command("list")
def list_modalities() -> None:
    """One line per registered modality: AE title, host, port, client certificate."""
    settings = _dicom_settings()
    try:
        registered = dicom_ca.load_modalities(settings)
    except dicom_ca.DicomAccessError as error:
        raise click.ClickException(str(error)) from None
    if not registered:
        click.echo("no modalities registered")
        return
    click.echo(f"{'AET':<16}  {'HOST':<15}  {'PORT':>5}  CERTIFICATE")
    for modality in sorted(registered.values(), key=lambda m: m.aet):
        cert_path, _ = dicom_ca.client_files(settings, modality.aet)
        expiry = dicom_ca.certificate_expiry(cert_path)
        issued = f"{cert_path} (until {expiry:%Y-%m-%d})" if expiry else "-"
        click.echo(f"{modality.aet:<16}  {modality.host:<15}  {modality.port:>5}  {issued}")


@modalities.command("remove")
@click.argument("aet")
def remove_modality(aet: str) -> None:
    """Unregister AET; the client certificate and key issued to it are deleted too."""
    settings = _dicom_settings()
    try:
        with dicom_ca.registry_lock(settings):
            registered = dicom_ca.load_modalities(settings)
            found = next((m for m in registered.values() if dicom_ca.same_aet(m.aet, aet)), None)
            if found is None:
                raise click.ClickException(f"no modality {aet!r} is registered")
            del registered[found.aet]
            dicom_ca.save_modalities(settings, registered)
            removed = [p for p in dicom_ca.client_files(settings, found.aet) if p.exists()]
            for path in removed:
                path.unlink()
    except dicom_ca.DicomAccessError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"removed {found.aet}"
        + (f"; deleted {', '.join(str(p) for p in removed)}" if removed else "")
    )
    click.echo(APPLY_NOTE)


if __name__ == "__main__":
    main()
