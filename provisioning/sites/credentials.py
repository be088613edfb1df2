"""Each site's Administrator password: generated strong, and stored only encrypted (the once-only
reveal to its owner is in ``sites.passwords``).

The key (``SITE_CREDENTIALS_KEY``) is a Fernet key: AES in CBC mode with an HMAC, so a stored
value that was tampered with, or a wrong key, fails loudly instead of decrypting to garbage.
"""

from __future__ import annotations

import secrets
import string

from cryptography.fernet import Fernet, InvalidToken

from provisioning.errors import ProvisioningError

PASSWORD_LENGTH = 24
_ALPHABET = string.ascii_letters + string.digits
_GROUPS = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
_WHOLE_ALPHABETS = 256 - 256 % len(_ALPHABET)


class CredentialsUnavailable(ProvisioningError):
    """No key is configured, or the stored password does not open with the configured key."""


def new_key() -> str:
    return Fernet.generate_key().decode()


def is_valid_key(key: str) -> bool:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True


def generate_password() -> str:
    """A random password with lower and upper case letters and digits (frappe's strength checks
    want variety); no symbols, so no shell or URL quoting can ever change it."""
    while True:
        # One draw from the system's generator, not one per character; bytes past the last whole
        # multiple of the alphabet are dropped, so every character is equally likely.
        usable = [byte for byte in secrets.token_bytes(2 * PASSWORD_LENGTH) if byte < _WHOLE_ALPHABETS]
        password = "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in usable[:PASSWORD_LENGTH])
        if len(password) == PASSWORD_LENGTH and all(any(char in group for char in password) for group in _GROUPS):
            return password


class SiteCredentials:
    def __init__(self, key: str | None):
        self._fernet = Fernet(key.encode()) if key else None

    def encrypt(self, password: str) -> str:
        return self._cipher().encrypt(password.encode()).decode()

    def decrypt(self, stored: str) -> str:
        try:
            return self._cipher().decrypt(stored.encode()).decode()
        except InvalidToken:
            raise CredentialsUnavailable(
                "the stored admin password does not open with SITE_CREDENTIALS_KEY (was the key changed?)"
            ) from None

    def check(self) -> None:
        """Raise CredentialsUnavailable, saying what to do, unless a key is configured."""
        self._cipher()

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            raise CredentialsUnavailable("SITE_CREDENTIALS_KEY is not set: make one with `provisioning credentials-key`")
        return self._fernet
