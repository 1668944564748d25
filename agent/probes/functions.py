"""User-defined functions of multi-step API checks: Mapping, Regex, Hash, JwtEncode, JwtDecode."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from shared import regex
from shared.msa import UserDefinedFunction

JWT_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
HASHES = {
    "MD5": hashlib.md5,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def execute(function: UserDefinedFunction, value: str) -> str | None:
    """The function applied to `value`; None when it yields nothing (no mapping, no match).
    ValueError says what is wrong with the input."""
    match function.Type:
        case "Mapping":
            return function.table().get(value)
        case "Regex":
            try:
                found = regex.search(function.Regex, value)
            except regex.RegexError as exc:  # stored before RE2 checked patterns at the API
                raise ValueError(f"function {function.Name!r}: {exc}") from None
            if found is None:
                return None
            return found.group(1) if found.groups() else found.group(0)
        case "Hash":
            algorithm = function.HashAlgorithm
            if algorithm.startswith("HMAC"):
                digest = getattr(hashlib, algorithm.removeprefix("HMAC").lower())
                return hmac.new(function.HashKey.encode(), value.encode(), digest).hexdigest()
            return HASHES[algorithm](value.encode(), usedforsecurity=False).hexdigest()
        case "JwtEncode":
            try:
                claims = json.loads(value)
            except ValueError:
                raise ValueError("JwtEncode needs a JSON object as input") from None
            header = {"alg": function.JwtAlgorithm, "typ": "JWT"}
            signing_input = ".".join(
                _b64url(json.dumps(part, separators=(",", ":")).encode())
                for part in (header, claims)
            )
            key = function.JwtSigningKey.encode()
            mac = hmac.new(key, signing_input.encode(), JWT_HASHES[function.JwtAlgorithm])
            return f"{signing_input}.{_b64url(mac.digest())}"
        case "JwtDecode":
            try:
                head, body, signature = value.split(".")
                header = json.loads(_unb64url(head))
                claims = _unb64url(body).decode()
            except (ValueError, UnicodeDecodeError):
                raise ValueError("JwtDecode needs a JWT (three dot-separated parts)") from None
            if function.JwtSigningKey:
                digest = JWT_HASHES.get(str(header.get("alg")))
                if digest is None:
                    raise ValueError(f"JWT algorithm {header.get('alg')!r} is not supported")
                expected = hmac.new(
                    function.JwtSigningKey.encode(), f"{head}.{body}".encode(), digest
                ).digest()
                if not hmac.compare_digest(expected, _unb64url(signature)):
                    raise ValueError("the JWT's signature does not match JwtSigningKey")
            return claims
    raise ValueError(f"function type {function.Type!r} is not supported")
