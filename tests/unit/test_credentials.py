"""Site admin passwords: strong, of letters and digits only, and encrypted at rest."""

import string
from collections import Counter

import pytest

from provisioning.sites.credentials import PASSWORD_LENGTH, CredentialsUnavailable, SiteCredentials, generate_password, new_key


def test_a_password_has_upper_and_lower_case_letters_and_digits_and_nothing_to_quote():
    passwords = [generate_password() for _ in range(2000)]
    allowed = set(string.ascii_letters + string.digits)
    for password in passwords:
        assert len(password) == PASSWORD_LENGTH and set(password) <= allowed
        assert any(c.islower() for c in password) and any(c.isupper() for c in password) and any(c.isdigit() for c in password)
    assert len(set(passwords)) == len(passwords)


def test_every_character_is_about_as_likely():
    counts = Counter(char for _ in range(4000) for char in generate_password())
    expected = 4000 * PASSWORD_LENGTH / 62
    assert len(counts) == 62
    assert all(abs(count - expected) < 0.15 * expected for count in counts.values()), counts.most_common(3)


def test_a_stored_password_opens_only_with_its_key():
    stored = SiteCredentials(new_key()).encrypt("s3cret")
    assert "s3cret" not in stored
    with pytest.raises(CredentialsUnavailable, match="was the key changed"):
        SiteCredentials(new_key()).decrypt(stored)
