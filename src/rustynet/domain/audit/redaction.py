"""The redaction rules: which text is a Rustynet secret (`SECRET_MARKERS`) and which field names
hold one (`is_secret_name`). The audit writer refuses both; the logging redactor cuts them out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from rustynet.domain.errors import LocalProtocolError

# Text that marks a Rustynet secret wherever it appears: signing and tunnel private keys, join
# tokens, PASETO tokens, admin API keys, OS-keyring entries. The logging redactor uses this list.
SECRET_MARKERS: Final = (
    "rnsk_",
    "rntsk_",
    "rnjoin1_",
    "v4.public.",
    "v4.local.",
    "rnk_",
    "rnks1:",
)
# Field names (lower-cased, without "_" and "-", matched as substrings) that hold secrets.
SECRET_NAME_WORDS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "apikey",
    "privatekey",
    "keymaterial",
    "seed",
    "cookie",
)
# Identifiers of secrets are not secrets: `token_id`, `key_fingerprint` may be audited.
_IDENTIFIER: Final = re.compile(r".*[_-](id|ids|fingerprint)")


def is_secret_name(name: str) -> bool:
    """True when a field called `name` would hold a secret (case-insensitive substring)."""
    folded = re.sub(r"[-_\s]", "", name.casefold())
    return any(word in folded for word in SECRET_NAME_WORDS)


def contains_secret_marker(text: str) -> bool:
    """True when `text` contains one of our secret markers anywhere."""
    return any(marker in text for marker in SECRET_MARKERS)


class SecretInAuditDetails(LocalProtocolError):  # noqa: N818 - names the refusal
    """Details handed to the audit log carry (or are named like) a secret."""


def refuse_secrets(value: object, path: str) -> None:
    if isinstance(value, str):
        if contains_secret_marker(value):
            raise SecretInAuditDetails(f"{path}: looks like a secret; audit identifiers only")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            if is_secret_name(name) and not _IDENTIFIER.fullmatch(name.casefold()):
                raise SecretInAuditDetails(
                    f"{path}.{key}: a field named like a secret may not be audited"
                )
            refuse_secrets(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            refuse_secrets(item, f"{path}[{i}]")
