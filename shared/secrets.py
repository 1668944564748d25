"""Secrets in monitor definitions: the one policy of what is secret, how the API shows and keeps
it, and which values are scrubbed from everything stored or logged about a monitor's checks.

Secret (write-only in the API, until the Vault seals them):
- `Password` and `ClientCertificateKey`;
- request headers whose names carry credentials (`Authorization`, `Proxy-Authorization`,
  `Cookie`, `X-Api-Key`, names ending in `-Token`, `-Secret` or `-Key`, any case) and every
  header sent with `IsSecret: true` (monitor headers `{Name, Value}`, step headers `{Key, Value}`);
- userinfo in URLs (`http://user:pass@host`): the monitor's, and each multi-step step's;
- multi-step step passwords (`Authentication.Password`) and user-defined functions'
  `JwtSigningKey` / `HashKey`, in `MsaSteps` / `UserDefinedFunctions` and inside
  `MultiStepApiTransactionScript` alike.

The API returns a set secret as `******` (a URL as `scheme://******@host/...`). Sending `******`
back, or leaving the field out, keeps the stored value; `""` clears it.

The definition is walked as the JSON it is stored as (not the typed models), so the controller
applies the policy before validation and the agent derives its scrub list from the assignment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

from pydantic import ValidationError

from shared import jsonin

MASK = "******"
# values shorter than this stay write-only in the API but are not scrubbed from free text:
# replacing every "ab" in a response body would erase ordinary words, not protect a secret
MIN_SCRUB_LENGTH = 4

SECRET_HEADER_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
SECRET_HEADER_SUFFIXES = ("-token", "-secret", "-key")
SECRET_FIELDS = ("Password", "ClientCertificateKey")
FUNCTION_SECRETS = ("JwtSigningKey", "HashKey")
SCRIPT_FIELD = "MultiStepApiTransactionScript"

# scheme://userinfo@ : the userinfo ends at the last "@" before the path, query or fragment
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")


def is_secret_header(name: str, flagged: bool = False) -> bool:
    """Whether a request header's value is a credential (by its name, or flagged IsSecret)."""
    lower = name.lower()
    return flagged or lower in SECRET_HEADER_NAMES or lower.endswith(SECRET_HEADER_SUFFIXES)


def userinfo(url: str) -> str:
    """The userinfo of an absolute URL (`user:pass` of `http://user:pass@host/`), or ""."""
    match = _USERINFO.match(url)
    return match.group(2) if match else ""


def mask_url(url: str) -> str:
    """The URL with its userinfo shown as `******`."""
    match = _USERINFO.match(url)
    if match is None or not match.group(2):
        return url
    return f"{match.group(1)}{MASK}@{url[match.end() :]}"


def origin(url: Any) -> str:
    """Where a URL sends its credentials: scheme and authority without userinfo, lower case,
    as written (`{{base}}` for a URL made from a variable); "" for no URL."""
    if not isinstance(url, str):
        return ""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return f"{scheme.lower()}://{authority.lower()}"


# a stored secret is kept only for the scheme, host and port it was set for: otherwise anyone
# allowed to edit a monitor could point it at a server of theirs and receive its credentials
RESEND = (
    "is ******, which only keeps a stored secret while the URL keeps its scheme, host and "
    "port: send the secret itself"
)


def not_mask(value: str) -> str:
    """A secret field's value, refused if it is the mask (nothing stored was kept for it)."""
    if value == MASK:
        raise ValueError(RESEND)
    return value


def not_masked_url(url: str) -> str:
    """A URL, refused if its userinfo is the mask (nothing stored was kept for it)."""
    if userinfo(url) == MASK:
        raise ValueError(f"userinfo {RESEND}")
    return url


def keep_url(new: str, old: str, moved: bool = False) -> str:
    """A URL sent back with `******` as its userinfo gets the stored URL's userinfo, if it
    still points where the stored one did (else the mask stays and validation refuses it)."""
    match = _USERINFO.match(new)
    stored = userinfo(old)
    if match is None or match.group(2) != MASK or not stored:
        return new
    if moved or origin(new) != origin(old):
        return new
    return f"{match.group(1)}{stored}@{new[match.end() :]}"


# --- the API: shown masked ---------------------------------------------------------------------


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list as sent, ignoring anything else (validation reports it)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _header_name(header: dict[str, Any]) -> str:
    name = header.get("Name", header.get("Key", ""))
    return name if isinstance(name, str) else ""


def _header_is_secret(header: dict[str, Any]) -> bool:
    return is_secret_header(_header_name(header), header.get("IsSecret") is True)


def _redact_headers(headers: Any) -> Any:
    if not isinstance(headers, list):
        return headers
    return [
        {**h, "Value": MASK}
        if isinstance(h, dict) and h.get("Value") and _header_is_secret(h)
        else h
        for h in headers
    ]


def _redact_url(url: Any) -> Any:
    return mask_url(url) if isinstance(url, str) else url


def _redact_steps(steps: Any) -> Any:
    if not isinstance(steps, list):
        return steps
    shown: list[Any] = []
    for step in steps:
        if isinstance(step, dict):
            step = {**step}
            if "Url" in step:
                step["Url"] = _redact_url(step["Url"])
            if "RequestHeaders" in step:
                step["RequestHeaders"] = _redact_headers(step["RequestHeaders"])
            auth = step.get("Authentication")
            if isinstance(auth, dict) and auth.get("Password"):
                step["Authentication"] = {**auth, "Password": MASK, "PasswordSpecified": True}
        shown.append(step)
    return shown


def _redact_functions(functions: Any) -> Any:
    if not isinstance(functions, list):
        return functions
    return [
        {k: (MASK if k in FUNCTION_SECRETS and v else v) for k, v in f.items()}
        if isinstance(f, dict)
        else f
        for f in functions
    ]


def _redact_msa(holder: dict[str, Any]) -> None:
    if "MsaSteps" in holder:
        holder["MsaSteps"] = _redact_steps(holder["MsaSteps"])
    if "UserDefinedFunctions" in holder:
        holder["UserDefinedFunctions"] = _redact_functions(holder["UserDefinedFunctions"])


def _parsed_script(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        parsed = jsonin.loads(text)
    except ValueError:  # not JSON, nested too deeply, an over-long number: validation says so
        return None
    return parsed if isinstance(parsed, dict) else None


def redact(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition as the API shows it: every set secret as `******`."""
    shown = dict(definition)
    for name in SECRET_FIELDS:
        if shown.get(name):
            shown[name] = MASK
    if "Url" in shown:
        shown["Url"] = _redact_url(shown["Url"])
    if "RequestHeaders" in shown:
        shown["RequestHeaders"] = _redact_headers(shown["RequestHeaders"])
    _redact_msa(shown)
    script = _parsed_script(shown.get(SCRIPT_FIELD))
    if script is not None:
        _redact_msa(script)
        shown[SCRIPT_FIELD] = json.dumps(script)
    return shown


# --- the API: kept when sent back masked or left out --------------------------------------------


def _kept(holder: dict[str, Any], key: str) -> bool:
    """Whether the sender asked to keep the stored value: left out, or sent as `******`."""
    return key not in holder or holder[key] == MASK


def _keep_headers(new: Any, old: Any, moved: bool) -> None:
    """Headers are matched by name (any case), the n-th of a name with the n-th stored; when
    the URL `moved` elsewhere a kept secret becomes the mask (refused by validation)."""
    stored: dict[str, list[dict[str, Any]]] = {}
    for header in _dicts(old):
        stored.setdefault(_header_name(header).lower(), []).append(header)
    seen: dict[str, int] = {}
    for header in _dicts(new):
        name = _header_name(header).lower()
        index = seen.get(name, 0)
        seen[name] = index + 1
        candidates = stored.get(name, [])
        if index >= len(candidates) or not _kept(header, "Value"):
            continue
        before = candidates[index]
        if _header_is_secret(before) and before.get("Value"):
            header["Value"] = MASK if moved else before["Value"]
            if before.get("IsSecret") is True:
                header["IsSecret"] = True  # a kept secret stays one


def _text(value: Any) -> str | None:
    """A name or id as sent, if it is a non-empty string (the body is not validated yet)."""
    return value if isinstance(value, str) and value else None


def _step_matches(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[Any]:
    """For each new step, the stored step it stands for: same `Authentication.Id`, else the
    same name (when unique), else the one at the same position."""

    def auth_id(step: dict[str, Any]) -> str | None:
        auth = step.get("Authentication")
        return _text(auth.get("Id")) if isinstance(auth, dict) else None

    by_id = {auth_id(s): s for s in old if auth_id(s) is not None}
    names = Counter(_text(s.get("Name")) for s in old)
    by_name = {_text(s.get("Name")): s for s in old if names[_text(s.get("Name"))] == 1}
    by_name.pop(None, None)
    matches: list[Any] = []
    for index, step in enumerate(new):
        found = by_id.get(auth_id(step)) if auth_id(step) is not None else None
        if found is None and _text(step.get("Name")) is not None:
            found = by_name.get(_text(step.get("Name")))
        if found is None and index < len(old):
            found = old[index]
        matches.append(found)
    return matches


def _variable_sources(holder: dict[str, Any]) -> str:
    """What the variables of a script come from: predefined values, and each step's URL (its
    userinfo masked) and extraction rules."""
    steps = [(_redact_url(s.get("Url")), s.get("Variables")) for s in _dicts(holder["MsaSteps"])]
    return json.dumps([holder.get("PredefinedVariables"), steps], sort_keys=True, default=str)


def _keep_steps(new: Any, old: Any, sources_changed: bool) -> None:
    """`sources_changed`: a step whose URL takes its host from a variable (`{{base}}/login`)
    counts as pointed elsewhere when what its variables come from changed."""
    steps = _dicts(new)
    for step, before in zip(steps, _step_matches(steps, _dicts(old)), strict=True):
        if before is None:
            continue
        was = origin(before.get("Url"))
        moved = origin(step.get("Url", before.get("Url"))) != was
        moved = moved or ("{{" in was and sources_changed)
        if isinstance(step.get("Url"), str) and isinstance(before.get("Url"), str):
            step["Url"] = keep_url(step["Url"], before["Url"], moved)
        if "RequestHeaders" in step:
            _keep_headers(step["RequestHeaders"], before.get("RequestHeaders"), moved)
        auth, stored = step.get("Authentication"), before.get("Authentication")
        if not (isinstance(auth, dict) and isinstance(stored, dict)):
            continue
        if stored.get("Password") and _kept(auth, "Password"):
            auth["Password"] = MASK if moved else stored["Password"]


def _keep_functions(new: Any, old: Any) -> None:
    stored = {_text(f.get("Name")): f for f in _dicts(old)}
    for function in _dicts(new):
        before = stored.get(_text(function.get("Name")))
        if before is None:
            continue
        for key in FUNCTION_SECRETS:
            if _kept(function, key) and before.get(key):
                function[key] = before[key]


def _keep_msa(new: dict[str, Any], old: dict[str, Any]) -> None:
    if "MsaSteps" in new:
        merged = {**old, **new}  # a PATCH leaves PredefinedVariables as they are
        changed = _variable_sources(merged) != _variable_sources({"MsaSteps": [], **old})
        _keep_steps(new["MsaSteps"], old.get("MsaSteps"), changed)
    if "UserDefinedFunctions" in new:
        _keep_functions(new["UserDefinedFunctions"], old.get("UserDefinedFunctions"))


def keep(new: dict[str, Any], old: dict[str, Any], patch: bool = False) -> None:
    """Fill the secrets of a PUT or PATCH body (`new`) that were sent as `******` or left out
    from the stored definition (`old`); `""` clears. A credential is kept only while the URL
    it goes to keeps its scheme, host and port; otherwise it is set to `******`, which
    validation refuses (`not_mask`): it must be sent again. `patch`: what `new` leaves out
    stays as stored, so stored credential headers are checked too. Changes `new` in place."""
    moved = origin(new.get("Url", old.get("Url"))) != origin(old.get("Url"))
    stored_headers = old.get("RequestHeaders")
    if patch and moved and "RequestHeaders" not in new and isinstance(stored_headers, list):
        # the stored headers stay: their credentials count as left out (kept, so checked)
        new["RequestHeaders"] = [
            {k: v for k, v in h.items() if not (k == "Value" and _header_is_secret(h))}
            if isinstance(h, dict)
            else h
            for h in stored_headers
        ]
    for name in SECRET_FIELDS:
        if _kept(new, name) and name in old:
            # a client key is never sent to the server (TLS proves it by a signature)
            sent = name == "Password"
            new[name] = MASK if moved and sent and old[name] else old[name]
    if isinstance(new.get("Url"), str) and isinstance(old.get("Url"), str):
        new["Url"] = keep_url(new["Url"], old["Url"])
    if "RequestHeaders" in new:
        _keep_headers(new["RequestHeaders"], old.get("RequestHeaders"), moved)
    if patch and "MsaSteps" not in new and "PredefinedVariables" in new and "MsaSteps" in old:
        # the stored steps stay, their credentials as if sent back masked: checked too
        new["MsaSteps"] = _redact_steps(json.loads(json.dumps(old["MsaSteps"])))
    _keep_msa(new, old)
    script = _parsed_script(new.get(SCRIPT_FIELD))
    if script is not None:
        _keep_msa(script, _parsed_script(old.get(SCRIPT_FIELD)) or {})
        new[SCRIPT_FIELD] = json.dumps(script)


# --- the revision (the API's Hash) -----------------------------------------------------------

# a plain hash of a definition would let anyone who can read the Hash and the rest of the
# definition test guesses of its secrets offline; keyed with a key of this process's own, it
# still changes with every edit (the agents see secret changes) and tells nothing. Revisions
# are stored, so a restart with a new key only makes the next edit's revision differ.
_REVISION_KEY = os.urandom(32)


def revision(definition: dict[str, Any]) -> str:
    """A definition's revision: 16 hex digits that change with any edit, secrets included."""
    text = json.dumps(definition, sort_keys=True).encode()
    return hmac.new(_REVISION_KEY, text, hashlib.sha256).hexdigest()[:16]


# --- the values to scrub ----------------------------------------------------------------------


def basic_token(user: str, password: str) -> str:
    """What libcurl sends for Basic authentication (and for userinfo in a URL)."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def url_secret_values(url: Any) -> list[str]:
    info = userinfo(url) if isinstance(url, str) else ""
    if not info:
        return []
    user, _, password = info.partition(":")
    values = [info, unquote(info), basic_token(unquote(user), unquote(password))]
    if password:
        values += [password, unquote(password)]
    return values


def header_secret_values(headers: Any) -> list[str]:
    values: list[str] = []
    for header in _dicts(headers):
        value = header.get("Value")
        if not isinstance(value, str) or not value or not _header_is_secret(header):
            continue
        values.append(value)
        scheme, _, credentials = value.partition(" ")
        if credentials and scheme.isalpha():  # "Bearer <token>": the token alone, too
            values.append(credentials.strip())
        if _header_name(header).lower() == "cookie":
            values += [part.partition("=")[2].strip() for part in value.split(";")]
    return values


def _msa_values(holder: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for step in _dicts(holder.get("MsaSteps")):
        values += url_secret_values(step.get("Url"))
        values += header_secret_values(step.get("RequestHeaders"))
        auth = step.get("Authentication")
        password = auth.get("Password") if isinstance(auth, dict) else None
        if isinstance(auth, dict) and isinstance(password, str) and password:
            values += [password, basic_token(str(auth.get("UserName", "")), password)]
    for function in _dicts(holder.get("UserDefinedFunctions")):
        values += [str(function[k]) for k in FUNCTION_SECRETS if function.get(k)]
    return values


def secret_values(definition: dict[str, Any]) -> list[str]:
    """Every secret value of a definition, in the forms it may show up in text: as is, the
    credentials of an `Authorization` value without its scheme, the Basic-auth token libcurl
    makes from a user name and password (or a URL's userinfo), percent-decoded userinfo."""
    values: list[str] = [str(definition[k]) for k in SECRET_FIELDS if definition.get(k)]
    password = definition.get("Password")
    if isinstance(password, str) and password:
        values.append(basic_token(str(definition.get("Username", "")), password))
    values += url_secret_values(definition.get("Url"))
    values += header_secret_values(definition.get("RequestHeaders"))
    values += _msa_values(definition)
    script = _parsed_script(definition.get(SCRIPT_FIELD))
    if script is not None:
        values += _msa_values(script)
    return values


class Scrubber:
    """Replaces a monitor's secret values by `******` in text. Built once per assignment;
    falsy when the monitor has no secrets, so checks of most monitors skip scrubbing."""

    __slots__ = ("_bytes", "_texts")

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if len(value) < MIN_SCRUB_LENGTH:
                continue
            # as is, and as it appears escaped in JSON or percent-encoded in a URL
            forms.update((value, json.dumps(value)[1:-1], quote(value, safe="")))
        # the longest first, so a secret inside another is not replaced half
        self._texts = tuple(sorted(forms, key=len, reverse=True))
        self._bytes = tuple(text.encode() for text in self._texts)

    @classmethod
    def of(cls, definition: dict[str, Any]) -> Scrubber:
        return cls(secret_values(definition))

    def __bool__(self) -> bool:
        return bool(self._texts)

    def text(self, text: str) -> str:
        for value in self._texts:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for value in self._bytes:
            if value in data:
                data = data.replace(value, MASK.encode())
        return data

    def deep(self, value: Any) -> Any:
        """Strings anywhere in a JSON-like value, scrubbed; dicts and lists are changed in
        place (a check's details are its own), keys are left alone (the probe names them)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str):
                    value[key] = self.text(item)
                elif isinstance(item, dict | list):
                    self.deep(item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    value[index] = self.text(item)
                elif isinstance(item, dict | list):
                    self.deep(item)
        return value


def validation_summary(exc: ValidationError) -> str:
    """A validation error without the input values pydantic's own text quotes (they may be
    secrets): fit for logs about a definition."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)
