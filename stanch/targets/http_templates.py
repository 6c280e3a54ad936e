"""What a generic HTTP step says, and how its values are filled in: the step's shape (requests,
`before` reads, `after` captures, the undo and its check), RFC 6901 pointers, `{before.NAME}` and
`{after.NAME}` placeholders, and scrubbing secrets out of what is recorded.

`stanch.targets.http` sends the requests; this module decides nothing about the network.

Where each kind of value may go:
- `${VAR}` and `${file:path}` (secret references) only in headers: a URL reaches logs and
  records, and a body is sent as written, so both refuse them when the step is validated.
- `{before.NAME}`: what a `before` read captured, anywhere after that read.
- `{after.NAME}`: what `after` captured from the change's own answer, in the undo only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

PLACEHOLDER = re.compile(r"\{(before|after)\.([A-Za-z0-9_]+)\}")
JsonPointer = Annotated[str, Field(pattern=r"^(/.*)?$", description="RFC 6901: '' is the whole document, /a/0/b~1c a path")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def refuse_reference_in_url(url: str) -> str:
    if "${" in url:
        raise ValueError("no secret reference in a URL: URLs reach logs and records — send the secret in a header")
    return url


def refuse_reference_in_body(body: Any) -> Any:
    if "${" in json.dumps(body, default=str):
        raise ValueError("`${...}` in a body is sent as written, never expanded — secrets belong in headers")
    return body


class HttpRequest(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    expect: list[int] = Field(default_factory=lambda: [200, 201, 202, 204], min_length=1)

    @field_validator("url")
    @classmethod
    def _url_names_no_secret(cls, url: str) -> str:
        return refuse_reference_in_url(url)

    @field_validator("body")
    @classmethod
    def _body_names_no_secret(cls, body: Any) -> Any:
        return refuse_reference_in_body(body)


def _pointer_shorthand(value: Any) -> Any:
    return {"pointer": value} if isinstance(value, str) else value


class Capture(_Strict):
    """A value of a read's answer: at `pointer`; or, with `rank_by`, from the list at `pointer`
    the item ranked `index` by that number (0 = highest; with `below`, the highest of those ranked
    below it), then `value` inside it minus `drop`."""

    pointer: JsonPointer = ""
    rank_by: JsonPointer | None = None
    below: float | str | None = Field(
        None, description="with rank_by: only items ranked below this number, or {before.NAME} of an earlier read"
    )
    index: int = Field(0, ge=0)
    value: JsonPointer = ""
    drop: list[JsonPointer] = Field(default_factory=list)
    default: Any = Field(None, description="used when the pointer finds nothing (unset: a missing value fails the step)")


Captures = dict[str, Annotated[Capture, BeforeValidator(_pointer_shorthand)]]


class Read(HttpRequest):
    """A request made before the change, for the values it captures (no secret in its URL or body either)."""

    method: Literal["GET", "POST"] = "GET"
    expect: list[int] = Field(default_factory=lambda: [200], min_length=1)
    capture: Captures = Field(min_length=1)


class Check(_Strict):
    """The undo's precondition: GET `url`; the value at `pointer` must still be `equals` (what the
    change left there), else someone changed the object since and the undo is refused. If it is
    `restored` instead, the undo already took effect (a retried undo): nothing is sent again."""

    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    expect: list[int] = Field(default_factory=lambda: [200], min_length=1)
    pointer: JsonPointer
    equals: Any = Field(description="the value the change left; {after.NAME} or {before.NAME} work")
    restored: Any = Field(None, description="the value once the undo took effect (unset: never skip)")
    default: Any = Field(None, description="the value when the pointer finds nothing (unset: missing means changed)")
    reason: str = Field("someone changed it since", description="what a mismatch means, for the responder")

    @field_validator("url")
    @classmethod
    def _url_names_no_secret(cls, url: str) -> str:
        return refuse_reference_in_url(url)

    def as_request(self) -> HttpRequest:
        return HttpRequest(method="GET", url=self.url, headers=self.headers, expect=self.expect)


class Undo(HttpRequest):
    check: Check | None = None


class HttpStep(HttpRequest):
    hold: str | None = Field(
        None,
        min_length=1,
        description="the object the step protects (`litellm key {model}`): with the target's holds_file, the undo of "
        "one incident is held back while another holds the same object; unset: the change's method, URL and body",
    )
    before: list[Read] = Field(default_factory=list)
    after: Captures = Field(default_factory=dict, description="values of the change's own answer, for {after.NAME} in the undo")
    undo: Undo | None = None

    @model_validator(mode="after")
    def _placeholders_are_captured(self) -> HttpStep:
        captured: list[str] = []
        for number, read in enumerate(self.before):
            for space, name in placeholders(read.model_dump()):
                if space == "after" or name not in captured:
                    raise ValueError(f"before[{number}] uses {{{space}.{name}}}: a read can use only what an earlier read captured")
            captured += list(read.capture)
        if len(captured) != len(set(captured)):
            raise ValueError(f"before captures {captured}: each name once")
        change = placeholders(self.model_dump(exclude={"before", "after", "undo", "hold"}))
        early = sorted({name for space, name in change if space == "after"})
        if early:
            raise ValueError(
                f"{', '.join('{after.' + name + '}' for name in early)}: known only once the change answered — use it in the undo"
            )
        undo = placeholders(self.undo.model_dump()) if self.undo else []
        wanted = {name for space, name in change + undo if space == "before"}
        missing = sorted(wanted - set(captured))
        if missing:
            raise ValueError(f"{', '.join('{before.' + name + '}' for name in missing)} used but no `before` read captures it")
        missing = sorted({name for space, name in undo if space == "after"} - set(self.after))
        if missing:
            raise ValueError(f"{', '.join('{after.' + name + '}' for name in missing)} used but `after` captures no such value")
        return self

    def requests(self) -> list[tuple[str, HttpRequest | Read]]:
        """Every request the step may send, each with where it sits in the step."""
        found: list[tuple[str, HttpRequest | Read]] = [(f"before[{n}]", read) for n, read in enumerate(self.before)]
        found.append(("the step", self))
        if self.undo is not None:
            found.append(("the undo", self.undo))
            if self.undo.check is not None:
                found.append(("the undo's check", self.undo.check.as_request()))
        return found


def placeholders(value: Any) -> list[tuple[str, str]]:
    return PLACEHOLDER.findall(json.dumps(value, default=str))


# --- JSON pointers and placeholders ------------------------------------------------------


def resolve(document: Any, pointer: str) -> Any:
    """RFC 6901; KeyError names the first part that is not there."""
    value = document
    for part in pointer.split("/")[1:] if pointer else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(part)
    return value


def _without(value: Any, pointer: str) -> Any:
    parent_pointer, _, last = pointer.rpartition("/")
    try:
        parent = resolve(value, parent_pointer)
    except KeyError:
        return value
    last = last.replace("~1", "/").replace("~0", "~")
    if isinstance(parent, dict):
        parent.pop(last, None)
    return value


def capture(document: Any, spec: Capture, earlier: Mapping[str, Any] | None = None) -> Any:
    """KeyError: the pointer finds nothing; ValueError: `below` is not a number."""
    found = resolve(document, spec.pointer)
    if spec.rank_by is not None:
        limit = None
        if spec.below is not None:
            below = fill(spec.below, earlier or {})
            try:
                limit = float(below)
            except (TypeError, ValueError):
                raise ValueError(f"below: {spec.below} is not a number") from None
        ranked = []
        for item in found if isinstance(found, list) else []:
            try:
                rank = float(resolve(item, spec.rank_by))
            except (KeyError, TypeError, ValueError):
                continue  # an item without a rank is not a candidate (kubectl skips such ReplicaSets)
            if limit is None or rank < limit:
                ranked.append((rank, item))
        ranked.sort(key=lambda pair: pair[0], reverse=True)
        if spec.index >= len(ranked):
            where = "" if limit is None else f" below {spec.below}"
            raise KeyError(f"item {spec.index} by {spec.rank_by}{where} (only {len(ranked)} ranked)")
        found = resolve(ranked[spec.index][1], spec.value)
    found = json.loads(json.dumps(found))  # a copy: drop must not edit the answer
    for pointer in spec.drop:
        found = _without(found, pointer)
    return found


def fill(value: Any, before: Mapping[str, Any], after: Mapping[str, Any] | None = None) -> Any:
    """`{before.NAME}` (`{after.NAME}`) alone in a string becomes the captured JSON value; inside
    text, its text. Captured values are data: nothing in them is expanded."""
    spaces = {"before": before, "after": after or {}}
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return spaces[whole.group(1)][whole.group(2)]
        return PLACEHOLDER.sub(lambda m: _text(spaces[m.group(1)][m.group(2)]), value)
    if isinstance(value, list):
        return [fill(item, before, after) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, before, after) for key, item in value.items()}
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def scrub(value: Any, used: Mapping[str, str]) -> Any:
    """Every secret value that was sent, replaced by the reference that named it."""
    if isinstance(value, str):
        for secret, reference in used.items():
            value = value.replace(secret, reference)
        return value
    if isinstance(value, list):
        return [scrub(item, used) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item, used) for key, item in value.items()}
    return value
