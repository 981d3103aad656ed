#!/usr/bin/env python3
"""Prints the Debian archive this machine's apt takes its packages from, as the start of a one-line
source entry: `[OPTIONS] URI`, to which a script adds `SUITE main` (image/debian-download.sh, the
cross-build chroot). Every script that fetches from Debian asks here, so none names an archive itself.

    image/debian-archive.py

DEBIAN_MIRROR, when set, is the answer as it is: another archive's URI, with apt's options in front
where it needs them (`[trusted=yes] file:/srv/debian` for an unsigned local repository).

Otherwise the machine's apt configuration is read where apt reads it (Dir::Etc::sourcelist and
Dir::Etc::sourceparts, so APT_CONFIG is honoured): one-line `.list` files and deb822 `.sources` files.
The Debian archive is the first enabled `deb` source that serves a Debian release by its name (bookworm,
sid, stable...) rather than its -security, -updates or -backports suites; its signed-by and trusted
options are kept (an architecture restriction is not: the scripts fetch other architectures).
"""

import os
import shlex
import subprocess
import sys

# Release names and aliases of Debian's archive; its security, updates and backports suites carry a suffix.
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable"}
KEPT_OPTIONS = {"signed-by", "trusted"}


def apt_dirs():
    """The sources list file and parts directory apt reads, from apt-config (honours APT_CONFIG)."""
    out = subprocess.run(["apt-config", "shell", "LIST", "Dir::Etc::sourcelist/f",
                          "PARTS", "Dir::Etc::sourceparts/d"], check=True, capture_output=True, text=True).stdout
    values = dict(shlex.split(line)[0].split("=", 1) for line in out.splitlines() if "=" in line)
    return values.get("LIST", "/etc/apt/sources.list"), values.get("PARTS", "/etc/apt/sources.list.d/")


def one_line_entries(text):
    """(options, uri, suite) of each `deb` line of a sources.list."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        options = {}
        if words and words[0].startswith("["):
            joined = " ".join(words)
            inside, _, rest = joined[1:].partition("]")
            for option in inside.split():
                key, _, value = option.partition("=")
                options[key.lower()] = value
            words = rest.split()
        if len(words) >= 2:
            yield options, words[0], words[1]


def deb822_entries(text):
    """(options, uri, suite) of each enabled `deb` stanza of a .sources file, one per URI and suite."""
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        options = {k: v for k, v in fields.items() if k in KEPT_OPTIONS}
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield options, uri, suite


def machine_entries():
    source_list, parts = apt_dirs()
    files = [(source_list, one_line_entries)]
    if os.path.isdir(parts):
        for name in sorted(os.listdir(parts)):
            if name.endswith(".list"):
                files.append((os.path.join(parts, name), one_line_entries))
            elif name.endswith(".sources"):
                files.append((os.path.join(parts, name), deb822_entries))
    for path, parse in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        yield from parse(text)


def main():
    mirror = os.environ.get("DEBIAN_MIRROR", "").strip()
    if mirror:
        print(mirror)
        return
    for options, uri, suite in machine_entries():
        if suite.rstrip("/") in DEBIAN_SUITES:
            kept = [f"{key}={value}" for key, value in sorted(options.items()) if key in KEPT_OPTIONS]
            # A deb822 Signed-By may be an inline key block: only a path goes into a one-line entry.
            kept = [option for option in kept if "\n" not in option]
            print(f"[{' '.join(kept)}] {uri}" if kept else uri)
            return
    source_list, parts = apt_dirs()
    sys.exit(f"debian-archive.py: no Debian archive among the apt sources in {source_list} and {parts}: "
             "set DEBIAN_MIRROR to one (a URI, e.g. of a local mirror)")


if __name__ == "__main__":
    main()
