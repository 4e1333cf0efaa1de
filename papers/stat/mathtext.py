"""MATH-style answer handling for STAT at full scale: ``\\boxed{}`` extraction, normalisation, equivalence.

The paper does not specify its answer checker, so ours is
explicit and versioned (``CHECKER_VERSION`` is written into every full-scale record): extract the last
``\\boxed{...}`` (balanced braces), normalise LaTeX spelling (``\\left``, ``\\!``, ``\\dfrac``, units, ``^\\circ``,
trailing ``.0``, surrounding ``$``), compare strings, then numerically (fractions, decimals) and, when sympy is
installed and the strings parse as plain expressions, symbolically.

``answers_match`` picks the checker of a run: ``math-verify`` (Hugging Face's LaTeX / sympy verifier: intervals,
sets, matrices, equations; our normalised comparison decides only where it parses neither side) or ``boxed`` (ours
alone). The record's ``checker`` names the one used and its version.
"""

from __future__ import annotations

import re
from fractions import Fraction

CHECKER_VERSION = "stat-boxed-v1"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} with balanced braces, or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        m = re.match(r"\\boxed\s+(\S+)", text[idx:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def normalize(ans: str | None) -> str:
    if ans is None:
        return ""
    s = ans.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    for a, b in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("dfrac", "frac"),
        ("tfrac", "frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        (" ", ""),
    ):
        s = s.replace(a, b)
    s = re.sub(r"(degrees|degree|cm|units|unit|inches|inch|meters|dollars)$", "", s)
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)  # "x=5" -> "5"
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def _number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            val = Fraction(int(m.group(2)), int(m.group(3)))
            return -val if m.group(1) else val
        if re.fullmatch(r"-?\d+/\d+", s) or re.fullmatch(r"-?\d+(\.\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_equiv(pred: str | None, gold: str | None) -> bool:
    a, b = normalize(pred), normalize(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    try:
        import sympy

        if re.fullmatch(r"[0-9a-z+\-*/^(). ]+", a) and re.fullmatch(r"[0-9a-z+\-*/^(). ]+", b):
            ea, eb = sympy.sympify(a.replace("^", "**")), sympy.sympify(b.replace("^", "**"))
            return bool(sympy.simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001 - any parse failure means "not shown equal"
        return False
    return False


def checker_version(checker: str) -> str:
    if checker == "boxed":
        return CHECKER_VERSION
    from importlib.metadata import version

    return f"math-verify-{version('math-verify')} (+ {CHECKER_VERSION} where it parses neither side)"


def answers_match(pred: str | None, gold: str | None, checker: str = "math-verify") -> bool:
    """Is the extracted answer ``pred`` (content of the last box) equal to ``gold``?"""
    if checker == "boxed":
        return is_equiv(pred, gold)
    if pred is None or gold is None:
        return False
    from math_verify import parse, verify

    g, p = parse(f"${gold}$"), parse(f"${pred}$")
    if g and p:
        return bool(verify(g, p))
    return is_equiv(pred, gold)
