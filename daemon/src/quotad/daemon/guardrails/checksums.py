"""The check digits that tell a real card number or IBAN from a run of digits: the Luhn
checksum (ISO/IEC 7812) and the IBAN's mod-97 (ISO 13616, ISO 7064), with the IBAN length
of every country in the SWIFT registry."""

from __future__ import annotations

from typing import Final

IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
"""Country code → IBAN length, from the SWIFT IBAN registry."""


_LETTERS_AS_NUMBERS: Final = str.maketrans(
    {chr(code): str(code - ord("A") + 10) for code in range(ord("A"), ord("Z") + 1)}
)
"""IBAN check digits count letters as two digits: A = 10 … Z = 35."""


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn checksum."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (upper case, no spaces) has its country's length and mod-97 = 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    if not rearranged.isascii() or not rearranged.isalnum():
        return False
    return int(rearranged.translate(_LETTERS_AS_NUMBERS)) % 97 == 1
