"""Secrets at rest: the master key and the Fernet cipher that keeps deployment keys encrypted in PostgreSQL.

The master key is `INFERIA_MASTER_KEY` or `<data dir>/master_key` (created 0600 on the first start). It reaches
the processes that decrypt (the deployments actor, the API replicas) inside RuntimeConfig, whose repr hides it;
it is never written to the database, so a dump of the database alone reveals no key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

MASTER_KEY_FILE = "master_key"
# stored values carry this prefix: a value without it is a plain key from before encryption (migrated on boot)
PREFIX = "fernet:"


class SecretBoxError(Exception):
    """A stored secret cannot be decrypted (another master key?). The message never holds the secret."""


def valid_master_key(key: str) -> bool:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True


def load_or_create_master_key(data_dir: Path, from_env: str | None = None) -> tuple[str, bool]:
    """INFERIA_MASTER_KEY (from_env) if given, else the key in the data dir, else a new one. (key, created)."""
    if from_env:
        key = from_env.strip()
        if not valid_master_key(key):
            raise ValueError("INFERIA_MASTER_KEY must be a Fernet key (32 url-safe base64-encoded bytes)")
        return key, False
    path = data_dir / MASTER_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if not valid_master_key(key):
            raise ValueError(f"{path} does not hold a Fernet key")
        return key, False
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


class SecretBox:
    """Encrypts and decrypts the secrets the control plane must be able to read back (engine keys)."""

    # opened values are remembered by their sealed form (unique per seal: a random IV), so that reloading every
    # deployment's key (the proxy's key index, on each routing version) costs no decryption (~0.1 ms each)
    MEMO_MAX = 100_000

    def __init__(self, master_key: str) -> None:
        self._fernet = Fernet(master_key.encode())
        self._opened: dict[str, str] = {}

    def __repr__(self) -> str:
        return "SecretBox(***)"

    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(PREFIX)

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        """The plain value of a stored secret (a plain value from before encryption is returned as is)."""
        if not self.is_sealed(stored):
            return stored
        hit = self._opened.get(stored)
        if hit is not None:
            return hit
        try:
            plain = self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise SecretBoxError("a stored key cannot be decrypted with this master key") from exc
        if len(self._opened) >= self.MEMO_MAX:
            self._opened.clear()
        self._opened[stored] = plain
        return plain
