"""`picket agent enrol --controller URL --token T`: the one HTTP call an agent ever makes.

It makes the agent's X25519 key pair (the private key stays in the data directory, mode
0600; the controller keeps the public key to seal secrets to this agent), spends the token,
and writes what the controller answers — the agent's id, checkpoint, region and its own
broker login — to `<data dir>/identity.json` (mode 0600), which a later `picket agent` uses.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.files import write_atomically

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
KEY_FILE = "agent-key.pem"
ENROL_PATH = "/api/v4/Enrolment"


class EnrolFailed(Exception):
    pass


def _write_private(path: Path, data: bytes) -> None:
    """Written whole (a temp file renamed) and readable by the owner only."""
    write_atomically(path, data, mode=0o600)


def _key(data_dir: Path) -> X25519PrivateKey:
    """The agent's key: kept if a first attempt made it, else made now."""
    path = data_dir / KEY_FILE
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, X25519PrivateKey):
            raise EnrolFailed(f"{path} holds a key that is not X25519; move it away")
        return loaded
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    return key


def with_login(broker_url: str, username: str, password: str) -> str:
    parts = urlsplit(broker_url)
    host = parts.netloc.rpartition("@")[2]
    login = f"{quote(username, safe='')}:{quote(password, safe='')}@"
    return urlunsplit((parts.scheme, login + host, parts.path, "", ""))


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            messages = json.loads(exc.read())["Messages"]
            why = "; ".join(str(m.get("Message")) for m in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            why = exc.reason
        raise EnrolFailed(f"the controller refused: {exc.code} {why}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrolFailed(f"could not reach the controller at {url}: {exc}") from None
    if not isinstance(answer, dict):
        raise EnrolFailed("the controller's answer is not a JSON object")
    return answer


def enrol(controller_url: str, token: str, data_dir: Path) -> dict[str, str]:
    """Enrol and write the identity; returns it with the password masked."""
    if urlsplit(controller_url).scheme not in ("http", "https"):
        raise EnrolFailed("--controller must be an http:// or https:// URL")
    identity_path = data_dir / IDENTITY_FILE
    if identity_path.exists():
        raise EnrolFailed(
            f"this agent is already enrolled ({identity_path}); remove that file and "
            f"{KEY_FILE} to enrol it again with a new token"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = _key(data_dir)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    answer = _post(
        controller_url.rstrip("/") + ENROL_PATH,
        {"Token": token, "PublicKey": base64.b64encode(public).decode(), "KeyType": "X25519"},
    )
    try:
        identity = {
            "agent_id": str(answer["AgentId"]),
            "checkpoint": str(answer["CheckpointName"]),
            "region": str(answer["RegionName"]),
            "broker_url": with_login(
                str(answer["BrokerUrl"]), str(answer["MqttUsername"]), str(answer["MqttPassword"])
            ),
        }
    except KeyError as exc:
        raise EnrolFailed(f"the controller's answer lacks {exc}") from None
    _write_private(identity_path, json.dumps(identity, indent=2).encode())
    return {**identity, "broker_url": str(answer["BrokerUrl"])}


class IdentityUnusable(Exception):
    """identity.json is there but cannot be used: unreadable, not JSON, a field missing. Not a
    ValueError on purpose: pydantic would make it a settings error with no setting to name;
    `picket agent` exits with this message instead. It never contains the file's text (the
    broker password is in it)."""


def read_identity(data_dir: Path) -> dict[str, str] | None:
    """What enrolment wrote, or None if this agent was not enrolled."""
    path = data_dir / IDENTITY_FILE
    fix = "fix it, or remove it and enrol again"
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None  # not enrolled (an unusable data directory is reported where it is used)
    except OSError as exc:
        raise IdentityUnusable(f"cannot read {path}: {exc.strerror}; {fix}") from None
    try:
        identity = json.loads(raw)
    except UnicodeDecodeError:
        raise IdentityUnusable(f"{path} is not JSON (not UTF-8 text); {fix}") from None
    except json.JSONDecodeError as exc:
        raise IdentityUnusable(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {fix}"
        ) from None
    if not isinstance(identity, dict):
        raise IdentityUnusable(f"{path} is not a JSON object; {fix}")
    fields = ("agent_id", "checkpoint", "region", "broker_url")
    missing = [f for f in fields if not isinstance(identity.get(f), str) or not identity[f]]
    if missing:
        raise IdentityUnusable(
            f"{path} lacks {', '.join(missing)} (each a non-empty string); {fix}"
        )
    return {f: identity[f] for f in fields}
