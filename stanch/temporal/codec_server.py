"""The codec server: decrypts payloads for the Temporal UI and CLI, for authorised responders only.

Temporal's remote codec protocol: `POST .../encode` and `POST .../decode` take and answer a
`Payloads` message in protobuf JSON (`{"payloads": [{"metadata": {k: base64}, "data": base64}]}`);
only the last path segment matters, so the endpoint may be mounted under any prefix (the CLI
and UI add `X-Namespace`; one set of keys serves every namespace here). Point the UI at it
with `temporal server start-dev --ui-codec-endpoint URL` (what `stanch up` does) or the UI's
own codec setting; the CLI with `--codec-endpoint URL --codec-auth "Bearer <token>"`.

Who may use it is the API's rule: the responders file (`stanch responders token`, or JWTs from
your identity provider, which is what the UI forwards when it passes its access token).
Any responder may decode — auditors and viewers included, reading histories is their job;
encoding (the UI sending a signal) is for responders who may act. Without a responders file,
`--insecure-dev` lets anyone on this machine decode, as `stanch up` does for the local demo.
Every request is logged with who made it; payloads never are. A body over `MAX_BODY_BYTES` is
refused before it is read: at once when its Content-Length says so, at the limit when it has none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload, Payloads

from stanch.temporal.codec import DecryptionError, EncryptionCodec
from stanch.trust.responders import NotAuthenticated, Principal, ResponderAuth

log = logging.getLogger("stanch.codec_server")

DEFAULT_UI_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
# The UI caches codec results per page, but a history page can still send many payloads.
MAX_BODY_BYTES = 64 * 1024 * 1024


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    key_ids: list[str]
    auth: Literal["token", "insecure-dev"]


def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The responder behind a request. The API's rule: a token is checked whenever one is sent
    or a responders file is enforced; only a tokenless request under --insecure-dev goes unnamed."""
    auth: ResponderAuth = request.app.state.auth
    try:
        principal = auth.vouch(authorization)
    except NotAuthenticated as err:
        # 401 for a credential refused; 503 when the identity provider's keys could not be fetched.
        raise HTTPException(err.status_code, detail=str(err), headers=err.http_headers) from err
    return principal or Principal(user="anonymous", roles=[], via="insecure-dev")


Who = Annotated[Principal, Depends(authorised)]
Namespace = Annotated[str | None, Header(alias="X-Namespace")]


_FEWER = "ask for fewer payloads at once"


async def _body(request: Request) -> bytes:
    """The body, never more of it than the limit: an oversized one is a 413 before it is read
    (Content-Length) or as soon as it passes the limit (chunked)."""
    limit = MAX_BODY_BYTES
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413,
            detail=f"the body is {int(declared)} bytes; the codec server's limit is {limit} bytes: {_FEWER}",
            headers={"Connection": "close"},
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(
                413, detail=f"the body is over the codec server's limit of {limit} bytes: {_FEWER}", headers={"Connection": "close"}
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _payloads(request: Request) -> Payloads:
    body = await _body(request)
    try:
        return json_format.Parse(body or b"{}", Payloads())
    except json_format.ParseError as err:
        raise HTTPException(400, detail=f"the body is not a Payloads message in protobuf JSON: {err}") from None


def _answer(payloads: list[Payload]) -> Response:
    return Response(json_format.MessageToJson(Payloads(payloads=payloads)), media_type="application/json")


async def decode(request: Request, who: Who, namespace: Namespace = None) -> Response:
    payloads = await _payloads(request)
    codec: EncryptionCodec = request.app.state.codec
    try:
        decoded = await codec.decode(payloads.payloads)
    except DecryptionError as err:
        raise HTTPException(400, detail=str(err)) from None
    log.info("decode: %d payloads for %s (%s), namespace %s", len(decoded), who.user, who.via, namespace or "-")
    return _answer(decoded)


async def encode(request: Request, who: Who, namespace: Namespace = None) -> Response:
    if who.via != "insecure-dev" and not who.may_act:
        raise HTTPException(403, detail=f"{who.user} ({', '.join(who.roles)}) may read but not act; encoding is for responders who act")
    payloads = await _payloads(request)
    codec: EncryptionCodec = request.app.state.codec
    log.info("encode: %d payloads for %s (%s), namespace %s", len(payloads.payloads), who.user, who.via, namespace or "-")
    return _answer(await codec.encode(payloads.payloads))


def create_codec_app(codec: EncryptionCodec, auth: ResponderAuth, ui_origins: Sequence[str] = DEFAULT_UI_ORIGINS) -> FastAPI:
    app = FastAPI(title="Stanch codec server", description=__doc__, docs_url=None, redoc_url=None)
    app.state.codec, app.state.auth = codec, auth
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(ui_origins),
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"],
        # The UI may send its access token or cookies along ("include credentials").
        allow_credentials=True,
        max_age=600,
    )
    # Only the last path segment counts (the protocol): `/decode`, `/default/decode`, ...
    for path in ("/decode", "/{prefix:path}/decode"):
        app.add_api_route(path, decode, methods=["POST"], summary="Decrypt payloads (any responder)")
    for path in ("/encode", "/{prefix:path}/encode"):
        app.add_api_route(path, encode, methods=["POST"], summary="Encrypt payloads (responders who may act)")

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(key_ids=codec.key_ids, auth=auth.mode)

    return app


def serve(host: str, port: int, app: FastAPI) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="info")
