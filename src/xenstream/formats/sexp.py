"""S-expressions as xend's ``sxp`` module and OCaml's sexplib write them.

Lists in parentheses; atoms bare or quoted ('..' or ".."), with backslash
escapes (OCaml's decimal ``\\ddd`` included).  Enough to read the
configuration of xend images and xenopsd's metadata record.
"""

from __future__ import annotations

from typing import List, Union

Sexp = Union[str, List["Sexp"]]

_ESC = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "\\": "\\", "'": "'", '"': '"', " ": " "}


class SexpError(ValueError):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"at config offset {offset}: {message}")
        self.offset = offset


def parse_sxp(text: str) -> Sexp:
    """Parse one S-expression as xend's ``sxp`` module writes it: lists in
    parentheses, bare atoms, and quoted strings ('..' or "..", backslash escapes)."""
    pos = 0
    n = len(text)

    def skip_ws() -> None:
        nonlocal pos
        while pos < n and text[pos] in " \t\r\n":
            pos += 1

    def atom() -> str:
        nonlocal pos
        if text[pos] in "'\"":
            q = text[pos]
            start = pos
            pos += 1
            out = []
            while pos < n and text[pos] != q:
                if text[pos] == "\\" and pos + 1 < n:
                    pos += 1
                    c = text[pos]
                    if c.isdigit() and text[pos:pos + 3].isdigit():
                        out.append(chr(int(text[pos:pos + 3])))
                        pos += 3
                        continue
                    out.append(_ESC.get(c, c))
                    pos += 1
                    continue
                out.append(text[pos])
                pos += 1
            if pos >= n:
                raise SexpError(start, "unterminated string")
            pos += 1
            return "".join(out)
        start = pos
        while pos < n and text[pos] not in " \t\r\n()'\"":
            pos += 1
        return text[start:pos]

    def value() -> Sexp:
        nonlocal pos
        skip_ws()
        if pos >= n:
            raise SexpError(pos, "expected a value, found end of text")
        if text[pos] == "(":
            pos += 1
            items: List[Sexp] = []
            while True:
                skip_ws()
                if pos >= n:
                    raise SexpError(pos, "expected ')', found end of text")
                if text[pos] == ")":
                    pos += 1
                    return items
                items.append(value())
        if text[pos] == ")":
            raise SexpError(pos, "unexpected ')'")
        return atom()

    v = value()
    skip_ws()
    if pos != n:
        raise SexpError(pos, "text after the end of the expression")
    return v
