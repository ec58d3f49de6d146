"""Transparent data encryption of segments (format notes, section 7): keys from a JCEKS keystore, AES blocks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SUPPORTED_CIPHERS = frozenset({"AES/CBC/PKCS5Padding"})


class KeystoreError(ValueError):
    """The keystore cannot be opened, or lacks the key a segment names."""


@dataclass(frozen=True)
class EncryptionKeys:
    """Secret keys by alias, as ``transparent_data_encryption_options.key_provider`` would give them."""

    keys: Mapping[str, bytes] = field(repr=False)

    @classmethod
    def from_keystore(
        cls, path: str | os.PathLike[str], store_password: str, key_password: str | None = None
    ) -> EncryptionKeys:
        """Load every secret key of a JCEKS (or JKS) keystore; the key password defaults to the store's."""
        import jks

        try:
            store = jks.KeyStore.load(os.fspath(path), store_password, try_decrypt_keys=False)
        except (OSError, jks.util.KeystoreException) as error:
            raise KeystoreError(f"cannot open keystore {os.fspath(path)}: {error}") from error
        keys: dict[str, bytes] = {}
        for alias, entry in store.secret_keys.items():
            try:
                if not entry.is_decrypted():
                    entry.decrypt(key_password if key_password is not None else store_password)
            except jks.util.DecryptionFailureException as error:
                raise KeystoreError(f"wrong key password for alias {alias!r} in {os.fspath(path)}") from error
            keys[alias] = entry.key
        return cls(keys)

    def key(self, alias: str) -> bytes:
        try:
            return self.keys[alias]
        except KeyError:
            raise KeystoreError(f"no key with alias {alias!r} in the keystore") from None


def decrypt_block(key: bytes, iv: bytes, cipher_name: str, cipher_text: bytes | memoryview) -> bytes:
    """Decrypt one block. Every block starts a fresh CBC chain from the header IV (Java's doFinal resets it)."""
    if cipher_name not in SUPPORTED_CIPHERS:
        raise KeystoreError(f"unsupported cipher {cipher_name!r}; supported: {sorted(SUPPORTED_CIPHERS)}")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(bytes(cipher_text)) + decryptor.finalize()
