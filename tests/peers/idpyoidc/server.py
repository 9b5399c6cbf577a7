#!/usr/bin/env python3
"""RFC 8693 token-exchange peer for Baton's end-to-end tests.

The token service is IdentityPython's `idpyoidc` (PyPI, pinned in requirements.txt):
`idpyoidc.server.Server` with the OAuth 2.0 AS configuration, its token endpoint
(`idpyoidc.server.oauth2.token.Token`) and its RFC 8693 grant helper
(`idpyoidc.server.oauth2.token_helper.token_exchange.TokenExchangeHelper`).
Client authentication, subject-token validation, the token-exchange policy, JWT
signing and the signing keys are all the library's.

Everything in this file is test glue: the configuration, a thin Flask front that
only moves HTTP in and out of the library's endpoint `parse_request` /
`process_request` / `do_response`, the two `/test/*` endpoints of the contract in
../README.md, and narrowly scoped workarounds for idpyoidc 5.0.0 bugs (each marked
"WORKAROUND" below, with what the bug is and why the workaround is there).

Environment: PORT (0 = pick a free port), CLIENT_ID, CLIENT_SECRET, AUDIENCES,
TOKEN_LIFETIME. Prints one JSON ready line on stdout; everything else goes to stderr.
"""

import base64
import json
import logging
import os
import secrets
import signal
import sys
import threading
from urllib.parse import parse_qs, unquote_plus

from cryptojwt.exception import JWKESTException
from flask import Flask, Response, request
from idpyoidc.message.oauth2 import AuthorizationRequest
from idpyoidc.message.oidc import TokenErrorResponse
from idpyoidc.server import Server
from idpyoidc.server.configure import ASConfiguration
from idpyoidc.server.exception import ClientAuthenticationError, ToOld
from idpyoidc.server.oauth2.token_helper import validate_token_exchange_policy
from idpyoidc.server.oauth2.token_helper.access_token import AccessTokenHelper
from idpyoidc.server.oauth2.token_helper.client_credentials import ClientCredentials
from idpyoidc.server.oauth2.token_helper.token_exchange import TokenExchangeHelper
from idpyoidc.server.session.grant import ExchangeGrant
from idpyoidc.server.user_authn.authn_context import INTERNETPROTOCOLPASSWORD
from idpyoidc.server.user_authn.user import UserAuthnMethod
from idpyoidc.time_util import utc_time_sans_frac
from werkzeug.serving import make_server

log = logging.getLogger("idpyoidc-peer")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

# Scopes both clients may hold; /test/mint's default scope.
ALLOWED_SCOPES = ["openid", "orders.read", "orders.write", "billing.read", "billing.write"]
MINT_DEFAULT_SCOPE = ["openid", "orders.read", "billing.read"]
MINT_DEFAULT_EXPIRES_IN = 3600

# The user-facing application whose user logins /test/mint performs. It is a
# second, in-process-only client: the subject tokens belong to it, and Baton
# (CLIENT_ID) exchanges them, which is the cross-client case RFC 8693 is about.
APP_CLIENT_ID = "test-login-app"
APP_CLIENT_SECRET = secrets.token_urlsafe(24)
APP_REDIRECT_URI = "https://test-login-app.invalid/callback"


def env_config():
    audiences = [a.strip() for a in os.environ.get(
        "AUDIENCES", "https://orders.example,https://billing.example").split(",") if a.strip()]
    return {
        "port": int(os.environ.get("PORT", "0")),
        "client_id": os.environ.get("CLIENT_ID", "baton"),
        "client_secret": os.environ.get("CLIENT_SECRET", "baton-secret"),
        "audiences": audiences,
        "token_lifetime": int(os.environ.get("TOKEN_LIFETIME", "300")),
    }


# ---------------------------------------------------------------------------
# Glue: the "login" behind /test/mint. The library's Authorization endpoint asks
# a UserAuthnMethod who the user is; this one believes the `authn` argument the
# glue passes to Authorization.process_request (there is no login page).
# ---------------------------------------------------------------------------
class TestLogin(UserAuthnMethod):
    def __call__(self, **kwargs):
        raise NotImplementedError("no interactive login in the test peer")

    def authenticated_as(self, client_id, cookie=None, authorization="", **kwargs):
        if not authorization:
            return None, 0
        return {"uid": authorization}, utc_time_sans_frac()


# ---------------------------------------------------------------------------
# Glue: the token-exchange policy. The library's validate_token_exchange_policy
# does the audience / resource allow-list (invalid_target), refuses actor_token
# and narrows scope. It lets a request without any audience or resource through,
# and the token minted then has no `aud`; the contract needs one, so refuse that.
# ---------------------------------------------------------------------------
def token_exchange_policy(request, context, subject_token, **kwargs):
    if not request.get("audience") and not request.get("resource"):
        return TokenErrorResponse(
            error="invalid_target", error_description="audience or resource is required")
    return validate_token_exchange_policy(request, context, subject_token, **kwargs)


class PeerTokenExchangeHelper(TokenExchangeHelper):
    """The library's RFC 8693 helper with narrowly scoped fixes for idpyoidc 5.0.0."""

    # WORKAROUND (limitation): TokenExchangeHelper.token_types_mapping only knows
    # ...:access_token and ...:refresh_token, so subject_token_type=...:jwt is refused as
    # "Subject token invalid" (a KeyError caught internally). This peer's access tokens
    # are JWTs, so a subject token presented as ...:jwt is looked up as an access token.
    token_types_mapping = dict(TokenExchangeHelper.token_types_mapping, **{JWT_TYPE: "access_token"})

    def post_parse_request(self, request, client_id="", **kwargs):
        try:
            resp = super().post_parse_request(request, client_id, **kwargs)
        except (ToOld, JWKESTException) as err:
            # WORKAROUND (bug): post_parse_request only catches KeyError, UnknownToken and
            # BadSyntax around the subject-token lookup. An expired subject token raises
            # ToOld (or, more than cryptojwt's 15 s skew past exp, VerificationError) and
            # one with a bad signature raises BadSignature, out of parse_request: a 500.
            # Answer them like any other invalid subject token.
            log.info("subject token rejected: %r", err)
            resp = self.error_cls(error="invalid_request", error_description="Subject token invalid")
        return resp

    def _mint_token(self, token_class, grant, session_id, client_id, based_on=None,
                    scope=None, token_args=None, token_type=""):
        if isinstance(grant, ExchangeGrant):
            # WORKAROUND (bug): ExchangeGrant.payload_arguments throws away the payload it
            # built from the token (whose `resources` are the requested audience/resource)
            # and rebuilds it with aud = the grant's own `resources`, which
            # SessionManager.create_exchange_grant never fills in: the exchanged JWT has no
            # `aud`. Give the exchange grant the requested audience as its resources.
            grant.resources = list((token_args or {}).get("resources") or [])
            # WORKAROUND (bug): ExchangeGrant.__init__ overwrites the usage rules it is
            # given (AuthzHandling.usage_rules for the client, passed by
            # create_exchange_session) with a hard-coded
            # {"access_token": {"expires_in": 60, ...}}, so every exchanged token lives
            # 60 s whatever is configured. Put back the rules the library computed.
            grant.usage_rules = self.endpoint.upstream_get("context").authz.usage_rules(client_id)
        return super()._mint_token(token_class, grant, session_id, client_id, based_on=based_on,
                                   scope=scope, token_args=token_args, token_type=token_type)

    def token_exchange_response(self, token, issued_token_type):
        # WORKAROUND (bug): TokenExchangeHelper.process_request sets
        # `new_token.expires_at = token.expires_at` after minting, i.e. the exchanged
        # token's bookkeeping expiry (and so the response's expires_in) becomes the
        # SUBJECT token's, while the signed JWT carries its own exp. Take the expiry
        # back from the exp the library signed into the token.
        handler = self.endpoint.upstream_get("context").session_manager.token_handler[token.token_class]
        if hasattr(handler, "get_payload"):
            token.expires_at = handler.get_payload(token.value)["exp"]
        return super().token_exchange_response(token, issued_token_type)


class PeerClientCredentials(ClientCredentials):
    """ClientCredentials.process_request of idpyoidc 5.0.0, with two fixes.

    WORKAROUND (bug): the library looks up a previous session with
    `_mngr.get(["client_credentials", client_id])`, which returns the client's
    ClientSessionInfo node, not the session-info dict it then indexes:
    `'ClientSessionInfo' object is not subscriptable` (a 500) on a client's second
    request. Here the existing grant below that node is reused properly.
    WORKAROUND (bug): it answers token_type "access_token" (the token class) instead of
    "Bearer". The rest is the library's code path (its _mint_token, its signing).
    """

    def process_request(self, req, **kwargs):
        _context = self.endpoint.upstream_get("context")
        _mngr = _context.session_manager
        client_id = req["client_id"]
        if not req.get("authenticated", False):
            return self.error_cls(error="invalid_client", error_description="Client not authenticated")
        _grant_types_supported = _context.cdb[client_id].get("grant_types_supported")
        if _grant_types_supported and "client_credentials" not in _grant_types_supported:
            return self.error_cls(error="invalid_request", error_description="Unsupported grant type")

        path = ["client_credentials", client_id]
        branch_id = None
        try:
            node = _mngr.get(path)
        except KeyError:
            node = None
        if node is not None and node.subordinate:
            branch_id = _mngr.encrypted_branch_id(*_mngr.unpack_branch_key(node.subordinate[-1]))
        if branch_id is None:
            branch_id = _mngr.add_grant(path)
        _session_info = _mngr.get_session_info(branch_id, grant=True)

        _allowed = _context.cdb[client_id].get("allowed_scopes", [])
        access_token = self._mint_token(
            token_class="access_token", grant=_session_info["grant"],
            session_id=_session_info["branch_id"], client_id=_session_info["client_id"],
            based_on=None, scope=_allowed, token_type="Bearer")
        _resp = {"access_token": access_token.value, "token_type": "Bearer", "scope": _allowed}
        if access_token.expires_at:
            _resp["expires_in"] = access_token.expires_at - utc_time_sans_frac()
        return _resp


# ---------------------------------------------------------------------------
# Glue: configuration. Keys (signing, cookie, session encryption) are generated
# in memory at start; nothing is written to disk.
# ---------------------------------------------------------------------------
def build_server(issuer, cfg):
    exchange_config = {
        "subject_token_types_supported": [AT_TYPE, JWT_TYPE],
        "requested_token_types_supported": [AT_TYPE],
        "default_requested_token_type": AT_TYPE,
        "policy": {"": {"function": token_exchange_policy,
                        "kwargs": {"audience": cfg["audiences"], "resource": cfg["audiences"]}}},
    }
    conf = {
        "issuer": issuer,
        "keys": {"uri_path": "jwks", "key_defs": [{"type": "RSA", "use": ["sig"]}]},
        "cookie_handler": {
            "class": "idpyoidc.server.cookie_handler.CookieHandler",
            "kwargs": {"keys": {"key_defs": [
                {"type": "OCT", "kid": "sig", "use": ["sig"]},
                {"type": "OCT", "kid": "enc", "use": ["enc"]}]}},
        },
        "endpoint": {
            # Only used in-process by /test/mint (there is no login page).
            "authorization": {
                "path": "authorization",
                "class": "idpyoidc.server.oauth2.authorization.Authorization",
                "kwargs": {"response_types_supported": ["code"]},
            },
            "token": {
                "path": "token",
                "class": "idpyoidc.server.oauth2.token.Token",
                "kwargs": {
                    # The Token class defaults to request_format "json"; token requests
                    # are application/x-www-form-urlencoded, so let the library parse that.
                    "request_format": "urlencoded",
                    "client_authn_method": ["client_secret_basic", "client_secret_post"],
                    "grant_types_helpers": {
                        "authorization_code": {"class": AccessTokenHelper},
                        "client_credentials": {"class": PeerClientCredentials},
                        TOKEN_EXCHANGE: {"class": PeerTokenExchangeHelper, "kwargs": exchange_config},
                    },
                },
            },
        },
        "authentication": {
            "test_login": {"acr": INTERNETPROTOCOLPASSWORD, "class": TestLogin, "kwargs": {}},
        },
        # ExchangeGrant.payload_arguments always asks the user-info store for claims,
        # and raises ImproperlyConfigured without one; an empty store releases nothing.
        "userinfo": {"class": "idpyoidc.server.user_info.UserInfo", "kwargs": {"db": {}}},
        "authz": {
            "class": "idpyoidc.server.authz.AuthzHandling",
            "kwargs": {"grant_config": {
                "usage_rules": {
                    "authorization_code": {"supports_minting": ["access_token"], "max_usage": 1,
                                           "expires_in": 120},
                    # supports_minting access_token: a user's access token may be the
                    # subject of a token exchange.
                    "access_token": {"supports_minting": ["access_token"],
                                     "expires_in": MINT_DEFAULT_EXPIRES_IN},
                },
                "expires_in": 86400,
            }},
        },
        "token_handler_args": {
            "code": {"kwargs": {}},
            "token": {
                "class": "idpyoidc.server.token.jwt_token.JWTToken",
                "kwargs": {"lifetime": cfg["token_lifetime"], "alg": "RS256"},
            },
        },
        # sub = the user id as given to /test/mint (the default "public" sub is a hash).
        "session_params": {"sub_func": {"public": {"class": "idpyoidc.server.session.manager.RawID"}}},
    }
    here = os.path.dirname(os.path.abspath(__file__))
    server = Server(ASConfiguration(conf=conf, base_path=here), cwd=here)
    ctx = server.context

    ctx.cdb[cfg["client_id"]] = {
        "client_id": cfg["client_id"],
        "client_secret": cfg["client_secret"],
        "token_endpoint_client_authn_method": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": [TOKEN_EXCHANGE, "client_credentials"],
        "allowed_scopes": list(ALLOWED_SCOPES),
        # Lifetime of the tokens this client gets (exchanged tokens): TOKEN_LIFETIME.
        "token_usage_rules": {"access_token": {"supports_minting": ["access_token"],
                                               "expires_in": cfg["token_lifetime"]}},
        "token_exchange": exchange_config,
    }
    ctx.cdb[APP_CLIENT_ID] = {
        "client_id": APP_CLIENT_ID,
        "client_secret": APP_CLIENT_SECRET,
        "token_endpoint_client_authn_method": ["client_secret_post"],
        "redirect_uris": [(APP_REDIRECT_URI, None)],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "allowed_scopes": list(ALLOWED_SCOPES),
    }
    return server


# ---------------------------------------------------------------------------
# Glue: the Flask front.
# ---------------------------------------------------------------------------
def create_app():
    app = Flask("idpyoidc-peer")
    state = {"server": None, "token_exchange": 0}
    lock = threading.RLock()  # idpyoidc's in-memory session store is not thread-safe

    def json_response(body, status, headers=None):
        resp = Response(body if isinstance(body, str) else json.dumps(body), status=status,
                        content_type="application/json")
        for k, v in headers or []:
            if k.lower() != "content-type":
                resp.headers[k] = v
        return resp

    def oauth_error(error, description, status):
        headers = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Basic realm="idpyoidc-peer"'))
        return json_response({"error": error, "error_description": description}, status, headers)

    def library_response(endpoint, req, result):
        """Turn what process_request returned into HTTP via the library's do_response."""
        if isinstance(result, TokenErrorResponse) or (hasattr(result, "get") and "error" in result
                                                      and "response_args" not in result):
            err = result.to_dict() if hasattr(result, "to_dict") else dict(result)
            info = endpoint.do_response(request=req, **err)
            status = 401 if err.get("error") == "invalid_client" else 400
            return json_response(info["response"], status, info["http_headers"])
        result = dict(result)
        result.pop("cookie", None)  # the token endpoint's session cookie is of no use here
        info = endpoint.do_response(request=req, **result)
        return json_response(info["response"], 200, info["http_headers"])

    def basic_header():
        # WORKAROUND (bug): idpyoidc's basic_authn() base64-decodes the Basic credentials
        # but does not form-urldecode client_id and client_secret, which RFC 6749 section
        # 2.3.1 requires clients to encode; a secret with reserved characters sent
        # correctly would never match. Decode them here and hand the library the raw pair.
        value = request.headers.get("Authorization")
        if not value or not value.startswith("Basic "):
            return value
        try:
            cid, sec = base64.b64decode(value[6:]).decode("utf-8").split(":", 1)
        except Exception:
            return value  # let the library refuse it
        raw = f"{unquote_plus(cid)}:{unquote_plus(sec)}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @app.post("/token")
    def token():
        # Read the raw body first (request.form would consume it); the library parses it.
        body = request.get_data(cache=True, as_text=True)
        if parse_qs(body).get("grant_type") == [TOKEN_EXCHANGE]:
            with lock:
                state["token_exchange"] += 1
        endpoint = state["server"].get_endpoint("token")
        http_info = {"headers": {}, "url": request.url, "method": "POST"}
        auth = basic_header()
        if auth:
            http_info["headers"]["authorization"] = auth
        with lock:
            try:
                req = endpoint.parse_request(body, http_info=http_info)
            except ClientAuthenticationError as err:  # UnAuthorizedClient, UnknownClient, InvalidClient
                log.info("client authentication failed: %r", err)
                return oauth_error("invalid_client", "client authentication failed", 401)
            result = endpoint.process_request(req)
            return library_response(endpoint, req, result)

    @app.get("/jwks")
    def jwks():
        with lock:
            keys = state["server"].context.keyjar.export_jwks(private=False)
        return json_response(keys, 200)

    @app.post("/test/mint")
    def mint():
        # Glue: a user login done programmatically through the library's own
        # authorization-code flow: Authorization.parse_request/process_request (client
        # and redirect_uri checks, session + grant creation via the session manager and
        # AuthzHandling, code minting), then the token endpoint redeems the code as the
        # app client (client_secret_post). The access token is the library's own.
        sub = (request.form.get("sub") or "").strip()
        if not sub:
            return oauth_error("invalid_request", "sub is required", 400)
        scope = (request.form.get("scope") or "").split() or list(MINT_DEFAULT_SCOPE)
        auds = [a for v in request.form.getlist("aud") for a in v.split() if a]
        try:
            expires_in = int(request.form.get("expires_in") or MINT_DEFAULT_EXPIRES_IN)
        except ValueError:
            return oauth_error("invalid_request", "expires_in must be an integer", 400)
        if expires_in < 1:
            # The library cannot issue an already-expired token: the token endpoint reads
            # back the token it has just minted and refuses it (a 500). To get an expired
            # subject token, mint expires_in=1 and wait until exp has passed.
            return oauth_error("invalid_request", "expires_in must be at least 1", 400)

        server = state["server"]
        authz = server.get_endpoint("authorization")
        token_ep = server.get_endpoint("token")
        with lock:
            areq = AuthorizationRequest(client_id=APP_CLIENT_ID, redirect_uri=APP_REDIRECT_URI,
                                        response_type="code", scope=scope,
                                        state=secrets.token_urlsafe(8))
            parsed = authz.parse_request(areq.to_dict())
            if "error" in parsed:
                return json_response(parsed.to_dict(), 400)
            aresp = authz.process_request(parsed, authn=sub)
            args = aresp.get("response_args")
            if not args or "code" not in args:
                log.error("authorization failed: %r", aresp)
                return oauth_error("server_error", "authorization failed", 500)
            # expires_in: the lifetime of a grant's access tokens is the grant's usage
            # rule, which AuthzHandling copied from the configuration; set it for this grant.
            grant = server.context.session_manager[aresp["session_id"]]
            grant.usage_rules["access_token"]["expires_in"] = expires_in
            treq = {"grant_type": "authorization_code", "code": args["code"],
                    "redirect_uri": APP_REDIRECT_URI,
                    "client_id": APP_CLIENT_ID, "client_secret": APP_CLIENT_SECRET}
            if auds:
                treq["resource"] = auds  # RFC 8707; the library puts it in `aud`
            tparsed = token_ep.parse_request(treq)
            result = token_ep.process_request(tparsed)
            if "response_args" not in result:
                log.error("code redemption failed: %r", result)
                return oauth_error("server_error", "code redemption failed", 500)
            ra = result["response_args"]
            out = {"access_token": ra["access_token"], "expires_in": ra.get("expires_in", expires_in),
                   "scope": " ".join(ra.get("scope", []))}
        return json_response(out, 200)

    @app.get("/test/stats")
    def stats():
        with lock:
            return json_response({"token_exchange": state["token_exchange"]}, 200)

    @app.errorhandler(Exception)
    def unexpected(err):
        if hasattr(err, "code") and hasattr(err, "get_response"):  # werkzeug HTTPException
            return err
        log.exception("unhandled error")
        return oauth_error("server_error", type(err).__name__, 500)

    return app, state


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # idpyoidc logs whole requests (client secrets included) at INFO.
    logging.getLogger("idpyoidc").setLevel(logging.WARNING)
    logging.getLogger("cryptojwt").setLevel(logging.WARNING)

    cfg = env_config()
    app, state = create_app()
    # make_server binds and listens on 127.0.0.1:PORT now, so the real port (PORT=0)
    # is known before the issuer, and so the library server, is built.
    httpd = make_server("127.0.0.1", cfg["port"], app, threaded=True)
    port = httpd.socket.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    server = build_server(issuer, cfg)
    state["server"] = server

    def on_sigterm(signum, frame):
        log.info("signal %s, shutting down", signum)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)

    token_path = server.get_endpoint("token").endpoint_path
    ready = {"ready": True, "issuer": issuer, "token_endpoint": f"{issuer}/{token_path}",
             "jwks_uri": f"{issuer}/jwks"}
    log.info("idpyoidc peer listening on %s (client %s, audiences %s, token lifetime %ss)",
             issuer, cfg["client_id"], ",".join(cfg["audiences"]), cfg["token_lifetime"])
    sys.stdout.write(json.dumps(ready, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    httpd.serve_forever()
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
