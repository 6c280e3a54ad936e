"""Reading a `multipart/form-data` upload (`POST /v1/files`) with the standard library.

Starlette's own form parser needs the python-multipart package, which Stanch does not ship;
the e-mail parser reads the same MIME format, so no new dependency is needed for one route.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP


@dataclass(frozen=True)
class FormField:
    name: str
    value: bytes
    filename: str | None


class BadForm(ValueError):
    """The body is not a multipart form we can read."""


def parse_form(content_type: str, body: bytes) -> dict[str, FormField]:
    """The fields of a multipart/form-data body by name (the last one wins on repeats)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise BadForm("expected a multipart/form-data body with a boundary (send the file as a form upload)")
    envelope = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(envelope + body)
    if not message.is_multipart():
        raise BadForm("the multipart body could not be read")
    fields: dict[str, FormField] = {}
    for part in message.iter_parts():
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        fields[name] = FormField(name, payload if isinstance(payload, bytes) else b"", filename)
    return fields
