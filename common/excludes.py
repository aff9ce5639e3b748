"""rsync exclude-file rules, matched by our own code.

Why this module exists: go2tencentcloud users already maintain an
``rsync_excludes_linux.txt`` (rsync ``--exclude-from`` syntax) and expect it to
mean exactly what rsync makes of it.  cvmigrate never runs rsync, so this module
re-implements the part of rsync's filter engine (``exclude.c`` + ``wildmatch.c``)
that an ``--exclude-from`` file can reach, and a parity test
(``tests/integration/test_excludes_rsync_parity.py``) checks it against a real
rsync on a tree full of awkward names.

What an ``--exclude-from`` line means (rsync's "FILTER RULES" and "PATTERN
MATCHING RULES", as rsync 3.x really parses them):

* Lines end at ``\\n`` or ``\\r``.  Empty lines and lines whose first character
  is ``;`` or ``#`` are comments.  Nothing else is stripped: leading and
  trailing spaces are part of the pattern.
* ``- PATTERN`` excludes, ``+ PATTERN`` includes (exactly one space after the
  sign); any other line is an exclude pattern as it stands.  rsync does *not*
  accept the long forms (``exclude PATTERN``) in this mode: such a line
  excludes a file literally named ``exclude PATTERN``.  We do the same, for
  parity, but log a warning because that is rarely what the author meant.
* A line that is just ``!`` clears every rule read so far.
* The first matching rule decides; no match means "included".
* A trailing ``/`` makes the rule match directories only.
* A leading ``/`` anchors the pattern at the transfer root.  Otherwise a
  pattern with no ``/`` (not counting a trailing one) and no ``**`` is matched
  against the last path component; a pattern with an inner ``/`` but no
  ``**`` must match the last N+1 components (N = number of slashes); a
  pattern with ``**`` is tried at the start of the path and after every ``/``
  (a leading ``**`` also lets ``**/x`` match a top-level ``x``).
* ``*`` matches anything but ``/``; ``**`` (or more stars) anything, ``/``
  included -- it does *not* collapse, so ``a/**/b`` does not match ``a/b``;
  ``?`` one byte but ``/``; ``[...]`` a byte class (``!`` or ``^`` negates,
  ranges, ``[:alpha:]``-style names, ASCII only; a class never matches ``/``).
* ``dir/***`` matches the directory ``dir`` itself and everything inside.
* Backslash escapes the next character -- but only if the pattern contains a
  wildcard (``*``, ``?`` or ``[``); in a plain pattern ``\\`` is literal.

Where we are stricter than rsync: a pattern that rsync would silently never
match (an unterminated ``[`` class, an unknown ``[:name:]``, a trailing lone
backslash in a wildcard pattern, an embedded NUL) raises :class:`ConfigError`,
as does an empty pattern after ``-``/``+`` (rsync rejects that one too).

Directory pruning: when a directory is excluded, rsync never looks inside it,
so an include rule for something below an excluded directory has no effect
(``+ /var/log/keep`` after ``- /var/log/`` keeps nothing).  ``excluded()``
answers for one path only; the scanner must not descend into a directory for
which it returned True.

Paths are bytes (Linux file names need not be UTF-8).  Patterns are text in
the API, converted with UTF-8 + surrogateescape, so a rules file with arbitrary
bytes round-trips through :meth:`ExcludeRules.from_file` and ``lines``.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXCLUDE_LINES", "ExcludeRules", "escape_literal"]

#: The default rules for migrating a Linux root filesystem.  The first eight
#: are go2tencentcloud's ``rsync_excludes_linux.txt``.  ``/X/*`` (rather than
#: ``/X/``) keeps the directory itself, so the target still has the mount point.
DEFAULT_EXCLUDE_LINES: tuple[str, ...] = (
    "/dev/*",                            # device nodes: devtmpfs, recreated at boot
    "/sys/*",                            # sysfs: kernel view, not data
    "/proc/*",                           # procfs: per-process pseudo files (kcore is "128 TB")
    "/var/cache/yum/*",                  # package cache: re-downloadable, often large
    "/lost+found/*",                     # fsck debris of the source filesystem
    "/var/lib/lxcfs/*",                  # lxcfs FUSE mount (fake /proc files for containers)
    "/var/lib/docker-storage.btrfs",     # docker's loop-back storage image
    "/root/.local/share/gvfs-metadata/*",  # GNOME virtual-FS metadata: host specific, mmapped
    "/run/*",                            # tmpfs: pid files, sockets, locks of the running system
    "/.cvmigrate/",                      # cvmigrate's own state directory on the source
)

# [:name:] classes as rsync's wildmatch defines them (ASCII only, C locale).
_NAMED_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
    b"alpha": frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(0x20), 0x7F]),
    b"digit": frozenset(b"0123456789"),
    b"graph": frozenset(range(0x21, 0x7F)),
    b"lower": frozenset(b"abcdefghijklmnopqrstuvwxyz"),
    b"print": frozenset(range(0x20, 0x7F)),
    b"punct": frozenset(c for c in range(0x21, 0x7F) if not chr(c).isalnum()),
    b"space": frozenset(b" \t\n\r\v\f"),
    b"upper": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    b"xdigit": frozenset(b"0123456789abcdefABCDEF"),
}
_SLASH = ord("/")
_ALL_BUT_SLASH = frozenset(range(256)) - {_SLASH}


class _PatternError(ValueError):
    """Internal: a pattern rsync would never match; carries the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


@dataclass(frozen=True, slots=True)
class _Rule:
    include: bool
    pattern: bytes      # as written after the prefix, trailing "/" included
    dir_only: bool
    wild3: bool         # trailing "***": a directory also matches as "dir/"
    kind: bytes         # where rx starts: _ROOT, _START, _ANYWHERE or _LAST_COMPONENT
    rx: bytes           # the pattern itself, to be matched after ``kind``


class ExcludeRules:
    """An ordered list of rsync include/exclude rules; first match wins.

    Immutable.  Build with :meth:`parse` or :meth:`from_file`; combine with
    ``+`` (left operand's rules are tried first).
    """

    __slots__ = ("lines", "_rules", "_file_match", "_dir_match", "_file_excl", "_dir_excl")

    lines: tuple[str, ...]

    def __init__(self, rules: tuple[_Rule, ...] = ()) -> None:
        self._rules = rules
        self.lines = tuple(("+ " if r.include else "- ") + _decode(r.pattern) for r in rules)
        self._file_match, self._file_excl = _combine([r for r in rules if not r.dir_only], is_dir=False)
        self._dir_match, self._dir_excl = _combine(list(rules), is_dir=True)

    # -- construction -------------------------------------------------------

    @classmethod
    def parse(cls, lines: Iterable[str], origin: str = "<rules>") -> ExcludeRules:
        """Parse lines in rsync ``--exclude-from`` syntax.

        Each item may itself hold several lines (``\\n``/``\\r`` split them).
        Raises ConfigError naming ``origin``, the line number and the fix.
        """
        rules: list[_Rule] = []
        lineno = 0
        for item in lines:
            for physical in item.split("\n"):
                lineno += 1
                for text in physical.split("\r"):
                    if not text or text[0] in ";#":
                        continue
                    if text == "!":
                        rules.clear()
                        continue
                    rules.append(_parse_line(text, origin, lineno))
            if item.endswith("\n"):
                lineno -= 1  # "a\n" is one line, not a line plus an empty one
        return cls(tuple(rules))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ExcludeRules:
        """Read a rules file (any bytes; decoded UTF-8 with surrogateescape)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read exclude file {os.fspath(path)!r}: {exc.strerror}; "
                "fix the path or create the file"
            ) from exc
        return cls.parse([data.decode("utf-8", "surrogateescape")], origin=os.fspath(path))

    @classmethod
    def default(cls) -> ExcludeRules:
        """The rules of :data:`DEFAULT_EXCLUDE_LINES`."""
        return cls.parse(DEFAULT_EXCLUDE_LINES, origin="<default excludes>")

    # -- use ----------------------------------------------------------------

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """True if the first rule matching ``path`` is an exclude.

        ``path`` is relative to the transfer root, ``/``-separated, without a
        leading slash, never empty.  Pass ``is_dir=False`` for a symlink even
        if it points at a directory (rsync does not follow it either).  When
        this returns True for a directory the caller must not descend into it.
        """
        if is_dir:
            m = self._dir_match(b"/" + path + b"/")
            return m is not None and self._dir_excl[m.lastindex]  # type: ignore[index]
        m = self._file_match(b"/" + path + b"/")
        return m is not None and self._file_excl[m.lastindex]  # type: ignore[index]

    def __add__(self, other: ExcludeRules) -> ExcludeRules:
        if not isinstance(other, ExcludeRules):
            return NotImplemented
        return ExcludeRules(self._rules + other._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExcludeRules) and self.lines == other.lines

    def __hash__(self) -> int:
        return hash(self.lines)

    def __repr__(self) -> str:
        return f"ExcludeRules({list(self.lines)!r})"


# Where a rule's regex starts in the subject b"/" + path + b"/".
_ROOT = b"/"
_START = b""
_ANYWHERE = b".*/"
# Right after the last real "/", never backtracking out of it: a
# last-component rule costs O(len(basename)), not O(len(path)).
_LAST_COMPONENT = b"(?>.*/(?=[^/]))"


# -- parsing ------------------------------------------------------------------

def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


_LONG_FORMS = ("exclude ", "include ", "merge ", "dir-merge ", "hide ", "show ",
               "protect ", "risk ", "clear")


def _parse_line(text: str, origin: str, lineno: int) -> _Rule:
    include = False
    pattern = text
    if text.startswith(("- ", "+ ")):
        include = text[0] == "+"
        pattern = text[2:]
        if not pattern:
            raise ConfigError(
                f"{origin}:{lineno}: empty pattern after {text[0]!r} in rule {text!r}; "
                f"fix: write a pattern after \"{text[0]} \" or delete the line"
            )
    elif text.startswith(_LONG_FORMS):
        logger.warning(
            "%s:%d: rule %r is a plain pattern in an rsync exclude file (it excludes a file of "
            "that exact name); write \"- PATTERN\" or \"+ PATTERN\" if you meant a rule keyword",
            origin, lineno, text,
        )
    raw = pattern.encode("utf-8", "surrogateescape")
    try:
        return _compile_rule(raw, include)
    except _PatternError as exc:
        raise ConfigError(
            f"{origin}:{lineno}: {exc.problem} in rule {text!r}; fix: {exc.fix}"
        ) from None


def _compile_rule(raw: bytes, include: bool) -> _Rule:
    """Mirror rsync's add_rule()/rule_matches() flags, then build one regex.

    The regex is matched (fullmatch) against ``b"/" + path``, plus a trailing
    ``b"/"`` for a directory when the rule ends in ``***`` -- the same strings
    rsync hands to wildmatch (it prepends "/" for a leading "**" and appends
    "/" for "dir/***").
    """
    if b"\0" in raw:
        raise _PatternError("NUL byte", "remove the NUL byte from the pattern")
    pat = raw
    dir_only = False
    if len(pat) > 1 and pat.endswith(b"/"):
        pat, dir_only = pat[:-1], True
    anchored = pat.startswith(b"/")
    wild = any(c in pat for c in (b"*", b"[", b"?"))
    wild2 = wild and b"**" in pat
    wild2_prefix = wild2 and pat.startswith(b"**")
    wild3 = wild2 and pat.endswith(b"***")

    body = pat[1:] if anchored else pat
    rx = _translate(body) if wild else re.escape(body)
    if anchored:
        kind = _ROOT
    elif wild2_prefix:
        kind = _START                   # against "/" + path, from its start
    elif b"/" not in pat and not wild2:
        kind = _LAST_COMPONENT
    else:
        # N inner slashes and no "**": the last N+1 components (exact,
        # because only a literal "/" in the pattern can match a "/");
        # with "**": at the start or after any slash.  Both are "after some
        # slash of '/' + path".
        kind = _ANYWHERE
    return _Rule(include=include, pattern=raw, dir_only=dir_only, wild3=wild3, kind=kind, rx=rx)


def _translate(p: bytes) -> bytes:
    """rsync wildmatch pattern -> Python bytes regex (no anchors)."""
    out: list[bytes] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == 0x2A:  # '*'
            j = i
            while j < n and p[j] == 0x2A:
                j += 1
            out.append(b".*" if j - i > 1 else b"[^/]*")
            i = j
        elif c == 0x3F:  # '?'
            out.append(b"[^/]")
            i += 1
        elif c == 0x5B:  # '['
            members, i = _parse_class(p, i)
            out.append(_render_class(members))
        elif c == 0x5C:  # '\\'
            if i + 1 >= n:
                raise _PatternError(
                    "trailing backslash", "escape a literal backslash as \\\\ or remove it"
                )
            out.append(re.escape(p[i + 1:i + 2]))
            i += 2
        else:
            out.append(re.escape(p[i:i + 1]))
            i += 1
    return b"".join(out)


def _parse_class(p: bytes, i: int) -> tuple[frozenset[int], int]:
    """Parse the class starting at p[i] == '[' exactly like rsync's dowild().

    Returns the set of bytes it matches ('/' never) and the index after ']'.
    """
    n = len(p)
    unterminated = _PatternError(
        "unterminated character class '['",
        "close the class with ']' or escape a literal '[' as \\[",
    )
    i += 1
    negate = i < n and p[i] in b"!^"
    if negate:
        i += 1
    members: set[int] = set()
    prev = 0          # rsync's prev_ch: 0 after a range or a [:name:]
    first = True
    while True:
        if i >= n:
            raise unterminated
        ch = p[i]
        if ch == 0x5D and not first:  # ']' closes (but not as the first member)
            break
        first = False
        if ch == 0x5C:  # '\\' escapes the next byte
            i += 1
            if i >= n:
                raise unterminated
            ch = p[i]
            members.add(ch)
        elif ch == 0x2D and prev and i + 1 < n and p[i + 1] != 0x5D:  # range
            i += 1
            hi = p[i]
            if hi == 0x5C:
                i += 1
                if i >= n:
                    raise unterminated
                hi = p[i]
            members.update(range(prev, hi + 1))  # empty if reversed, as in rsync
            ch = 0
        elif ch == 0x5B and i + 1 < n and p[i + 1] == 0x3A:  # "[:"
            end = p.find(b"]", i + 2)
            if end < 0:
                raise unterminated
            if end - (i + 2) - 1 < 0 or p[end - 1] != 0x3A:
                members.add(ch)   # no ":]": a literal '['; continue after it
            else:
                name = p[i + 2:end - 1]
                if name not in _NAMED_CLASSES:
                    raise _PatternError(
                        f"unknown character class [:{_decode(name)}:]",
                        "use one of " + ", ".join(f"[:{k.decode()}:]" for k in _NAMED_CLASSES),
                    )
                members |= _NAMED_CLASSES[name]
                i = end
                ch = 0
        else:
            members.add(ch)
        prev = ch
        i += 1
    allowed = (_ALL_BUT_SLASH - members) if negate else (frozenset(members) - {_SLASH})
    return allowed, i + 1


def _render_class(members: frozenset[int]) -> bytes:
    if not members:
        return b"(?!)"
    if members == _ALL_BUT_SLASH:
        return b"[^/]"
    parts: list[bytes] = []
    vals = sorted(members)
    start = prev = vals[0]
    for v in [*vals[1:], None]:  # None closes the last range
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
        if v is not None:
            start = prev = v
    return b"[" + b"".join(parts) + b"]"


# -- matching -----------------------------------------------------------------

def _never(_: bytes) -> None:
    return None


def _combine(rules: list[_Rule], *, is_dir: bool) -> tuple[Callable[[bytes], re.Match[bytes] | None], tuple[bool, ...]]:
    """One compiled regex per kind of entry: alternatives in rule order.

    The subject is ``b"/" + path + b"/"``.  Ordinary rules match ``"/" + path``
    and are followed by a literal "/"; a ``***`` rule applied to a directory
    matches the whole subject (rsync appends that "/").  Alternation tries
    the rules in order, so ``m.lastindex`` names the first matching rule.
    Consecutive last-component rules (and consecutive anchored rules) share
    one positioning prefix; they are all tried at the same position, so
    their order is kept as well.
    """
    if not rules:
        return _never, (False,)
    alts: list[bytes] = []
    run: list[bytes] = []
    run_kind = b""          # the positioning prefix ``run`` shares; set with its first member
    for r in rules:
        alt = b"(" + r.rx + (b")" if (is_dir and r.wild3) else b")/")
        if r.kind in (_LAST_COMPONENT, _ROOT):
            if run and r.kind != run_kind:
                alts.append(run_kind + b"(?:" + b"|".join(run) + b")")
                run = []
            run_kind = r.kind
            run.append(alt)
            continue
        if run:
            alts.append(run_kind + b"(?:" + b"|".join(run) + b")")
            run = []
        alts.append(r.kind + alt)
    if run:
        alts.append(run_kind + b"(?:" + b"|".join(run) + b")")
    compiled = re.compile(b"(?s:" + b"|".join(alts) + b")")
    return compiled.fullmatch, (False, *(not r.include for r in rules))


def escape_literal(text: str, *, in_wildcard: bool = False) -> str:
    """``text`` as a pattern part matching only itself (the one way code writes a path into a rule).

    rsync's rule: a pattern without ``*``, ``?`` or ``[`` is compared literally, backslashes included;
    in one with any of them ``\\`` escapes the next character.  So a name without those characters is
    returned unchanged (escaping its ``\\`` would make it match another name), and one with them gets
    every ``\\``, ``[``, ``*`` and ``?`` escaped.  ``in_wildcard``: the caller adds a wildcard of its own
    (``escape_literal(p, in_wildcard=True) + "*"``), so escape always.
    """
    if not in_wildcard and not any(c in text for c in "*?["):
        return text
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("*", "\\*").replace("?", "\\?")
