"""Reaching an MLflow tracking server: credentials kept out of URIs, logs and links (MLflow's own auth
variables carry them), and a reachability check that fails in seconds, naming the server."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from seggen.errors import TrackingError

TRACKING_ENV = "SEGGEN_TRACKING"  # off: no tracking


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """-> (the URI without user:password@, user, password), percent-decoded."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=host)), user, password


def redact(uri: str) -> str:
    """The URI as messages, links and tags show it: user:***@host (a lone user part, often a token: ***@host)."""
    from urllib.parse import urlsplit, urlunsplit

    bare, user, password = split_credentials(uri)
    if user is None and password is None:
        return uri
    parts = urlsplit(bare)
    shown = f"{user}:***" if password is not None and user else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{parts.netloc}"))


def scrub(text: str, uri: str) -> str:
    """`text` (an error from a library, say) with the URI's password and the URI itself redacted."""
    _, user, password = split_credentials(uri)
    text = text.replace(uri, redact(uri))
    for secret in (password, None if password is not None else user):
        if secret:
            text = text.replace(secret, "***")
    return text


_FROM_URI: set[str] = set()  # the auth variables this process set from a URI's credentials


def _use_credentials(uri: str) -> str:
    """MLflow gets the URI without credentials and them as MLFLOW_TRACKING_USERNAME / _PASSWORD (which
    it sends as basic auth), so that nothing MLflow prints or stores -- its "View run at" links, run
    tags -- holds them. A URI's own credentials win over the variables; those taken from an earlier
    URI go when the next URI has none (a long-lived process must not send them to another server).
    -> the bare URI."""
    bare, user, password = split_credentials(uri)
    given = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    for var, value in given.items():
        if value is not None:
            os.environ[var] = value
            _FROM_URI.add(var)
        elif var in _FROM_URI:
            os.environ.pop(var, None)
            _FROM_URI.discard(var)
    return bare


def _auth_header() -> dict[str, str]:
    """What MLflow would send: a bearer token, or basic auth from the username / password variables."""
    import base64

    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is None:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any compute when a tracking server is named but does not answer. Credentials in
    the URI are sent as basic auth (not read as part of the host name)."""
    if not uri.startswith(("http://", "https://")):
        return
    bare = _use_credentials(uri)
    request = urllib.request.Request(bare.rstrip("/") + "/health", headers=_auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:  # it answered, but not OK: credentials refused (401/403), a proxy...
        reason = f"/health answered HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, "reason", e))
    raise TrackingError(
        f"MLFLOW_TRACKING_URI={redact(uri)}: tracking server unreachable ({scrub(reason, uri)}); "
        f"start it, unset MLFLOW_TRACKING_URI for the local store, or run offline with {TRACKING_ENV}=off"
    )


# -- lineage facts ------------------------------------------------------------------------------
