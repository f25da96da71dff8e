"""AES-CBC as DC-09 uses it, and key loading.

DC-09 mandates AES-CBC with an all-zero IV and no PKCS#7 padding: the sender prepends random
pad characters to the plaintext instead, which is what makes the first block differ between
two identical messages. Both rules are the standard's, not a choice made here.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.dc09.errors import DecryptError, InvalidKeyError

__all__ = ["AES_BLOCK", "KEY_SIZES", "aes_decrypt", "aes_encrypt", "check_key", "key_from_config"]

AES_BLOCK = 16
KEY_SIZES = (16, 24, 32)
_ZERO_IV = bytes(AES_BLOCK)


def check_key(key: bytes) -> None:
    """Raise :class:`InvalidKeyError` unless ``key`` is 16, 24 or 32 bytes long."""
    if len(key) not in KEY_SIZES:
        raise InvalidKeyError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")


def key_from_config(value: str, encoding: Literal["ascii", "hex"] = "ascii") -> bytes:
    """Turn a configured key string into AES key bytes.

    Receivers disagree on how a key is written: some take the ASCII bytes of a 16/24/32
    character string (pysiaalarm, many panels), others hex-decode a 32/48/64 character string.

    Args:
        value: The key as written in the configuration.
        encoding: ``"ascii"`` to use the characters' bytes, ``"hex"`` to hex-decode them.

    Returns:
        The 16, 24 or 32 key bytes.

    Raises:
        InvalidKeyError: The string does not decode to a valid AES key length.
    """
    if encoding == "ascii":
        try:
            key = value.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidKeyError("an ASCII AES key must contain ASCII characters only") from None
    elif encoding == "hex":
        try:
            key = bytes.fromhex(value)
        except ValueError:
            raise InvalidKeyError("a hex AES key must contain hex digits only") from None
    else:
        raise InvalidKeyError(f"key encoding must be 'ascii' or 'hex', got {encoding!r}")
    if len(key) not in KEY_SIZES:
        hint = "16/24/32 characters" if encoding == "ascii" else "32/48/64 hex digits"
        raise InvalidKeyError(f"AES key must be {hint}, got {len(value)} characters")
    return key


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    check_key(key)
    return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))


def aes_encrypt(key: bytes, plaintext: bytes) -> bytes:
    """Encrypt whole blocks with AES-CBC, zero IV, no padding.

    Raises:
        InvalidKeyError: Bad key length.
        ValueError: ``plaintext`` is not a multiple of 16 bytes.
    """
    if len(plaintext) % AES_BLOCK:
        raise ValueError("DC-09 plaintext must be a multiple of 16 bytes")
    enc = _cipher(key).encryptor()
    return enc.update(plaintext) + enc.finalize()


def aes_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    """Decrypt whole blocks with AES-CBC, zero IV, no padding.

    Raises:
        InvalidKeyError: Bad key length.
        DecryptError: ``ciphertext`` is empty or not a multiple of 16 bytes.
    """
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise DecryptError("ciphertext is not a whole number of AES blocks")
    dec = _cipher(key).decryptor()
    return dec.update(ciphertext) + dec.finalize()
