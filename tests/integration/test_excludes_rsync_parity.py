"""Parity: our ExcludeRules select exactly the files rsync would transfer.

Why: users bring go2tencentcloud's ``rsync_excludes_linux.txt`` and expect
rsync's meaning.  We never run rsync in production; here it is the oracle.
For each rule set we ask ``rsync --dry-run`` which relative paths it would
send from a tree full of awkward names, walk the same tree the way our scanner
does (top-down, skip excluded entries, never descend into an excluded
directory, symlinks are not directories) and require identical sets.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed (it is only the test oracle)")

# Directories end with "/"; "name -> target" is a symlink; everything else a file.
TREE: list[bytes] = [
    b"a/b/c/d/e/f/deep.txt", b"deep.txt", b"a/b/c/notes.txt", b"a/b/e", b"a/e/",
    b"b/c", b"x/b/c/", b"x/b/c/inside", b"d/", b"d/in-d", b"z/d/in-zd", b"z/d2/",
    b".bashrc", b".git/config", b".git/objects/ab/cdef", b"src/.git/HEAD", b".cache/pip/x.whl",
    b"my file.txt", b"dir with space/file", b" lead", b"trail ", b"two  spaces",
    b"a[1].txt", b"a1.txt", b"[weird]", b"weird", b"x]y", b"star*name", b"*", b"starname",
    b"what?", b"whatX", b"back\\slash", b"backslash",
    b"foo.bak", b"foo.BAK", b"bak/", b"src/foo.bak", b"src/deeper/foo.bak/", b"src/deeper/foo.bak/kept?",
    b"cache/", b"cache/blob", b"src/cache", b"var/cache/", b"var/cache/yum/x86_64/pkg.rpm",
    b"cachelink -> cache",
    b"caf\xc3\xa9", b"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.txt", b"\xff\xfe.bin", b"new\nline",
    b"-foo", b"+bar", b"!bang", b"!", b"#hash", b";semi", b"exclude foo",
    b"dev/null-ish", b"dev/pts/", b"proc/1/status", b"sys/kernel/x", b"run/lock/", b"run/sshd.pid",
    b"lost+found/#12", b"var/lib/lxcfs/proc", b"var/lib/docker-storage.btrfs",
    b"root/.local/share/gvfs-metadata/root", b"root/.bash_history",
    b".cvmigrate/journal", b"x/.cvmigrate", b"x/dev/keep", b"x/proc/", b"x/proc/keep",
    b"keep/important.bak", b"keep/sub/other.tmp", b"t.tmp", b"x/y/z.tmp",
]

RULE_SETS: dict[str, bytes] = {
    "suffix-wildcard": b"*.bak\n",
    "literal-name": b"foo.bak\n",
    "dir-only": b"cache/\n",
    "name-any-type": b"cache\n",
    "anchored": b"/a\n",
    "anchored-dir-deep": b"/a/b/\n",
    "unanchored-slash": b"b/c\n",
    "unanchored-slash-wild": b"*/c\n",
    "deep-literal": b"a/b/c/d/e/f/deep.txt\n",
    "double-star-prefix": b"**/deep.txt\n",
    "double-star-anchored": b"/**/deep.txt\n",
    "double-star-infix": b"a/**/e\n",
    "double-star-trailing": b"a/**\n",
    "double-star-only": b"**\n",
    "triple-star": b"d/***\n",
    "triple-star-anchored": b"/a/b/***\n",
    "triple-star-git": b"**/.git/***\n",
    "star-star-no-slash": b"x**\n",
    "include-dirs-txt-only": b"+ */\n+ *.txt\n- *\n",
    "include-under-excluded": b"- /a/\n+ /a/b/\n",
    "include-then-exclude": b"+ /keep/\n+ /keep/**\n- *.bak\n- *.tmp\n",
    "class": b"[abc]*\n",
    "class-negated-bang": b"[!a-m]*.txt\n",
    "class-negated-caret": b"[^.]*\n",
    "class-bracket-first": b"[]x]*\n",
    "class-dash-last": b"[a-]*\n",
    "class-named": b"*[[:digit:]]*\n",
    "class-literal-brackets": b"a[1].txt\n",
    "escaped-bracket": b"\\[weird]\n",
    "escaped-star": b"*\\**\n",
    "literal-backslash": b"back\\slash\n",
    "question-mark": b"what?\n",
    "spaces": b"* *\n",
    "leading-space": b" lead\n",
    "trailing-space": b"trail \n",
    "clear-list": b"*.txt\n!\n*.bak\n",
    "comments-and-prefix-lookalikes": b"# comment\n; comment\n\n-foo\n+bar\n!bang\nexclude foo\n",
    "dotfiles": b"- .*\n",
    "dotfiles-but-git": b"+ .git/\n.*\n",
    "unicode": b"caf\xc3\xa9\n\xe6\x97\xa5*\n",
    "non-utf8": b"\xff*\n",
    "newline-name": b"new*\n",
    "dir-only-wild": b"*a*/\n",
    "everything-top": b"/*\n",
    "var-lib-only": b"+ /var/\n+ /var/lib/\n- /var/lib/lxcfs/\n- /var/*\n",
    "crlf": b"*.bak\r\n/a\r\n",
    "case-sensitive": b"*.BAK\n",
    "suffix-two-components": b"deeper/foo.bak/\n",
    "escaped-lone-star": b"\\*\n",
    "root-slash-only": b"/\n",
    "any-dir": b"*/\n",
    "double-star-name-prefix": b"**e\n",
    "double-star-infix-no-slash": b"s**k\n",
    "double-star-dir-only": b"src/**/\n",
    "triple-star-dir-only": b"/x/***/\n",
    "two-wild-components": b"*/*/c\n",
    "class-ranges-and-reversed": b"[z-ad-f]*\n[a-c-e]\n",
    "class-escapes": b"[\\]x]*\n",
    "question-not-slash": b"a?b\n/a?b/c\n",
    "default-list": ("\n".join(DEFAULT_EXCLUDE_LINES) + "\n").encode(),
    "default-plus-user": ("\n".join(DEFAULT_EXCLUDE_LINES) + "\n/a/*\n*.tmp\n+ important.bak\n*.bak\n").encode(),
}


def _build_tree(root: Path) -> None:
    rootb = os.fsencode(root)
    for entry in TREE:
        if b" -> " in entry:
            name, target = entry.split(b" -> ")
            full = os.path.join(rootb, name)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.symlink(target, full)
        elif entry.endswith(b"/"):
            os.makedirs(os.path.join(rootb, entry), exist_ok=True)
        else:
            full = os.path.join(rootb, entry)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(b"x")


_ESCAPE = re.compile(rb"\\#([0-7]{3})")


def _rsync_selection(src: Path, rules_file: Path, dst: Path) -> set[bytes]:
    assert RSYNC is not None            # the module is skipped without it
    proc = subprocess.run(
        [RSYNC, "-rl8", "--dry-run", "--out-format=%n", f"--exclude-from={rules_file}",
         f"{src}/", f"{dst}/"],
        capture_output=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out: set[bytes] = set()
    for line in proc.stdout.split(b"\n"):
        if not line or line == b"./":
            continue
        # rsync escapes unprintable bytes (and a literal "\#") as \#ooo.
        name = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), line)
        out.add(name.rstrip(b"/"))
    return out


def _our_selection(src: Path, rules: ExcludeRules) -> set[bytes]:
    """Walk like the scanner: top-down, prune excluded directories."""
    out: set[bytes] = set()
    stack = [(os.fsencode(src), b"")]
    while stack:
        dirpath, rel = stack.pop()
        with os.scandir(dirpath) as it:
            for entry in it:
                path = rel + entry.name if not rel else rel + b"/" + entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if rules.excluded(path, is_dir):
                    continue
                out.add(path)
                if is_dir:
                    stack.append((entry.path, path))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity") / "src"
    root.mkdir()
    _build_tree(root)
    return root


def test_tree_is_complete(tree: Path) -> None:
    """Sanity: with no rules both sides see every entry (incl. the odd names)."""
    rules_file = tree.parent / "empty.rules"
    rules_file.write_bytes(b"")
    theirs = _rsync_selection(tree, rules_file, tree.parent / "dst")
    ours = _our_selection(tree, ExcludeRules.from_file(rules_file))
    assert ours == theirs
    assert b"new\nline" in ours and b"\xff\xfe.bin" in ours and b"back\\slash" in ours


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_same_selection_as_rsync(tree: Path, name: str) -> None:
    rules_file = tree.parent / f"{name}.rules"
    rules_file.write_bytes(RULE_SETS[name])
    theirs = _rsync_selection(tree, rules_file, tree.parent / "dst")
    rules = ExcludeRules.from_file(rules_file)
    ours = _our_selection(tree, rules)
    assert ours == theirs, (
        f"rule set {name!r}: only rsync keeps {sorted(theirs - ours)}, only we keep {sorted(ours - theirs)}"
    )
    # The normalized lines re-parse to the same selection (what a peer receives).
    assert _our_selection(tree, ExcludeRules.parse(rules.lines)) == ours
