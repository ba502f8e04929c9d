#!/usr/bin/env python3
"""Checks every relative link of the README and docs/: the file exists, and an anchor names a heading
of that file by GitHub's slug rules (lower case; punctuation but `-` and `_` dropped; spaces become `-`;
a repeated slug gets `-1`, `-2`, ...). Links out of the repository (http:, mailto:) are not followed.
Exit status 1 and one line per broken link."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FILES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
)


def slug(heading):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def headings(path):
    """The anchors of a Markdown file: its headings' slugs, outside fenced code."""
    seen, fence = {}, False
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6} +(.*?) *#*$", line.rstrip("\n"))
            if m:
                s = slug(m.group(1))
                n = seen.get(s)
                seen[s] = 0 if n is None else n + 1
                if n is not None:
                    seen[f"{s}-{n + 1}"] = 0
    return set(seen)


def links(path):
    """(line number, target) of every inline link and image, outside fenced and inline code."""
    fence = False
    with open(os.path.join(ROOT, path)) as f:
        for number, line in enumerate(f, 1):
            if line.startswith("```"):
                fence = not fence
                continue
            if fence:
                continue
            line = re.sub(r"`[^`]*`", "", line)
            for m in re.finditer(r"\]\(([^)\s]+)\)", line):
                yield number, m.group(1)


def main():
    broken = 0
    for path in FILES:
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(os.path.join(ROOT, linked)):
                print(f"{path}:{number}: {target}: no file {linked}")
                broken += 1
            elif anchor and (not linked.endswith(".md") or anchor not in headings(linked)):
                print(f"{path}:{number}: {target}: no heading #{anchor} in {linked}")
                broken += 1
    checked = sum(1 for p in FILES for _ in links(p))
    print(f"{checked} links in {len(FILES)} files, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
