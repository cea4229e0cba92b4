#!/usr/bin/env python3
"""Builds Maestro's container images without Docker, as docker-archive tar files.

The images are defined once, by the Containerfiles that Docker users build. This helper
reads the final stage of a Containerfile and reproduces it from parts that need no
container engine: a base layer (a debootstrap rootfs, made by build-images.sh), a layer
for what the stage's RUN lines do to users and directories, and one layer per COPY of a
prebuilt file (`COPY --from=STAGE`, given with --file) or of a file of the build context
(a plain `COPY FILE DEST`; the context is the Containerfile's folder). It understands only
the few RUN commands our Containerfiles use and fails on anything else, so the two build
paths cannot drift apart silently.

The output is what `docker save` wrote before Docker 25 (manifest.json, a config JSON and
uncompressed layer tars); `ctr -n k8s.io images import FILE` loads it into containerd.
Layer tars are deterministic (sorted entries, fixed mtime, no host user names), so the same
inputs give the same digests and containerd keeps the layers it already has.

Subcommands:
  base-spec CONTAINERFILE      print "SUITE PKG..." for the final stage, or "scratch"
  tar-rootfs DIR OUT           write a rootfs directory as a deterministic layer tar
  build CONTAINERFILE ...      write a docker-archive (see `build --help`)

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# Layer timestamps. SOURCE_DATE_EPOCH is the usual knob for reproducible builds.
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
# What Docker puts in the config of a Linux image that sets no PATH (debian images too).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Directories whose contents belong to the runtime, never to an image layer.
RUNTIME_DIRS = ("dev", "proc", "sys", "run", "tmp", "var/tmp")


class BuildError(Exception):
    pass


# --------------------------------------------------------------------------------------
# Containerfile reading


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    comment: str = ""


@dataclass
class Dir:
    path: str  # absolute
    uid: int
    gid: int
    mode: int


@dataclass
class Copy:
    source: str
    dest: str
    mode: int | None
    uid: int
    gid: int
    line: str
    from_context: bool = False  # a plain COPY: source is a file of the build context


@dataclass
class Stage:
    base: str  # "scratch" or an image reference
    packages: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    dirs: list[Dir] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    run_lines: list[str] = field(default_factory=list)  # for the image history
    user: str | None = None
    workdir: str = "/"
    workdir_set: bool = False
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    meta_lines: list[str] = field(default_factory=list)  # USER, ENV, ...: empty layers

    @property
    def suite(self) -> str:
        # debian:bookworm-slim, debian:bookworm -> bookworm. A debootstrap minbase system
        # is what the slim images are made from, so both map to the same rootfs.
        m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?debian:([a-z]+)(?:-slim)?", self.base)
        if not m:
            raise BuildError(f"FROM {self.base}: only debian:<suite>[-slim] and scratch can be built without Docker")
        return m.group(1)


def logical_lines(text: str) -> list[str]:
    """Joins backslash continuations and drops comments, like Docker's parser."""
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and cur):
            continue  # comments (and blank lines) inside a continuation are skipped too
        part = raw.strip() if cur else raw
        if part.endswith("\\"):
            cur += part[:-1].rstrip() + " "
            continue
        cur += part
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def exec_form(arg: str, what: str) -> list[str]:
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except json.JSONDecodeError as e:
            raise BuildError(f"{what} {arg}: not valid JSON: {e}") from e
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise BuildError(f"{what} {arg}: must be a JSON array of strings")
        return value
    return ["/bin/sh", "-c", arg]  # Docker's shell form


def parse_int(s: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]+", s):
        raise BuildError(f"{what}: expected a number, got {s!r} (use numeric ids)")
    return int(s)


def take_options(words: list[str], spec: dict[str, str], line: str) -> tuple[dict[str, str], list[str]]:
    """Parses GNU-style options: spec maps each spelling to a key; a key ending in '='
    takes a value. Returns the options and the remaining operands."""
    opts: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("-") and w != "-":
            name, eq, val = w.partition("=")
            if name not in spec:
                raise BuildError(f"RUN {line}: option {name} is not understood by oci_archive.py")
            key = spec[name]
            if key.endswith("="):
                if not eq:
                    i += 1
                    if i >= len(words):
                        raise BuildError(f"RUN {line}: {name} needs a value")
                    val = words[i]
                opts[key[:-1]] = val
            else:
                opts[key] = "1"
        else:
            rest.append(w)
        i += 1
    return opts, rest


def apply_command(stage: Stage, words: list[str], line: str) -> None:
    """Records what one RUN command does. Only commands with a known effect are accepted."""
    cmd, args = words[0], words[1:]
    if cmd == "apt-get" and args == ["update"]:
        return  # the debootstrap mirror is current; lists are trimmed from the layer anyway
    if cmd == "apt-get" and args[:1] == ["install"]:
        opts, pkgs = take_options(
            args[1:],
            {"-y": "yes", "--yes": "yes", "-q": "q", "-qq": "q", "--no-install-recommends": "norec"},
            line,
        )
        # debootstrap never installs Recommends: the Containerfile must not either, or the
        # two images would differ.
        if "norec" not in opts:
            raise BuildError(f"RUN {line}: add --no-install-recommends (debootstrap installs no Recommends)")
        if not pkgs:
            raise BuildError(f"RUN {line}: no packages")
        stage.packages.extend(pkgs)
        return
    if cmd == "rm" and args[:1] in (["-rf"], ["-fr"]) and all(a.startswith("/var/lib/apt/lists") for a in args[1:]):
        return  # build-images.sh trims the apt lists from every base layer
    if cmd == "groupadd":
        opts, rest = take_options(args, {"-g": "gid=", "--gid": "gid="}, line)
        if len(rest) != 1 or "gid" not in opts:
            raise BuildError(f"RUN {line}: expected groupadd -g GID NAME")
        stage.groups.append((rest[0], parse_int(opts["gid"], line)))
        return
    if cmd == "useradd":
        opts, rest = take_options(
            args,
            {
                "-u": "uid=",
                "--uid": "uid=",
                "-g": "gid=",
                "--gid": "gid=",
                "-d": "home=",
                "--home-dir": "home=",
                "-s": "shell=",
                "--shell": "shell=",
                "-c": "comment=",
                "--comment": "comment=",
                "-M": "nohome",
                "--no-create-home": "nohome",
            },
            line,
        )
        # Creating a home directory, mail spool or skeleton copy is more than this builder
        # does, so insist on -M and explicit ids.
        if len(rest) != 1 or not {"uid", "gid", "nohome"} <= opts.keys():
            raise BuildError(f"RUN {line}: expected useradd -u UID -g GID -M [-d HOME] [-s SHELL] NAME")
        stage.users.append(
            User(
                name=rest[0],
                uid=parse_int(opts["uid"], line),
                gid=parse_int(opts["gid"], line),
                home=opts.get("home", "/home/" + rest[0]),
                shell=opts.get("shell", "/bin/sh"),
                comment=opts.get("comment", ""),
            )
        )
        return
    if cmd == "install" and args[:1] == ["-d"]:
        opts, dirs = take_options(
            args[1:],
            {
                "-o": "owner=",
                "--owner": "owner=",
                "-g": "group=",
                "--group": "group=",
                "-m": "mode=",
                "--mode": "mode=",
            },
            line,
        )
        if not dirs:
            raise BuildError(f"RUN {line}: no directory")
        for d in dirs:
            if not d.startswith("/"):
                raise BuildError(f"RUN {line}: use absolute paths")
            stage.dirs.append(
                Dir(
                    path=d,
                    uid=parse_int(opts.get("owner", "0"), line),
                    gid=parse_int(opts.get("group", "0"), line),
                    mode=int(opts.get("mode", "0755"), 8),
                )
            )
        return
    raise BuildError(
        f"RUN {line}: `{' '.join(words)}` is not understood by oci_archive.py; "
        "teach it the command's effect, or change the Containerfile"
    )


def substitute(value: str, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        return env.get(m.group(1) or m.group(2), "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def parse_containerfile(path: str) -> Stage:
    with open(path, encoding="utf-8") as f:
        lines = logical_lines(f.read())
    # Only the final stage ends up in the image; earlier stages build what it COPYs.
    starts = [i for i, ln in enumerate(lines) if ln.split(None, 1)[0].upper() == "FROM"]
    if not starts:
        raise BuildError(f"{path}: no FROM")
    final = lines[starts[-1] :]
    from_words = final[0].split()
    if len(from_words) not in (2, 4) or any(w.startswith("--") for w in from_words):
        raise BuildError(f"{path}: {final[0]}: expected FROM IMAGE [AS NAME]")
    stage = Stage(base=from_words[1])
    if stage.base != "scratch":
        _ = stage.suite  # fail on an unsupported FROM before anything is built
    stage.env["PATH"] = DEFAULT_PATH.split("=", 1)[1]

    for line in final[1:]:
        instr, _, arg = line.partition(" ")
        instr = instr.upper()
        arg = arg.strip()
        if instr == "RUN":
            if arg.startswith("[") or arg.startswith("--"):
                raise BuildError(f"RUN {arg}: exec form and RUN flags are not understood in the final stage")
            words = shlex.split(arg)
            for w in words:
                if w != "&&" and re.search(r"[;|&<>`]|\$\(", w):
                    raise BuildError(f"RUN {arg}: only commands joined by && are understood")
            cmd: list[str] = []
            for w in words + ["&&"]:
                if w == "&&":
                    if not cmd:
                        raise BuildError(f"RUN {arg}: empty command")
                    apply_command(stage, cmd, arg)
                    cmd = []
                else:
                    cmd.append(w)
            stage.run_lines.append(arg)
        elif instr == "COPY":
            words = shlex.split(arg)
            opts = {}
            while words and words[0].startswith("--"):
                k, _, v = words.pop(0)[2:].partition("=")
                opts[k] = v
            unknown = set(opts) - {"from", "chmod", "chown"}
            if unknown or len(words) < 2:
                raise BuildError(
                    f"COPY {arg}: expected COPY [--from=STAGE] [--chmod=MODE] [--chown=UID:GID] SRC... DEST"
                )
            # Without --from the sources are files of the build context: plain relative
            # paths only (no globs, no way out of the context), each checked in build().
            from_context = "from" not in opts
            for src in words[:-1] if from_context else []:
                if src.startswith("/") or ".." in PurePosixPath(src).parts or re.search(r"[*?\[]", src):
                    raise BuildError(f"COPY {arg}: {src}: expected a relative path in the build context")
            dest = words[-1]
            uid = gid = 0
            if "chown" in opts:
                u, _, g = opts["chown"].partition(":")
                uid = parse_int(u, "COPY --chown")
                gid = parse_int(g or u, "COPY --chown")
            for src in words[:-1]:
                d = dest
                if d.endswith("/") or len(words) > 2:
                    d = d.rstrip("/") + "/" + PurePosixPath(src).name
                if not d.startswith("/"):
                    d = str(PurePosixPath(stage.workdir) / d)
                mode = int(opts["chmod"], 8) if "chmod" in opts else None
                stage.copies.append(Copy(src, d, mode, uid, gid, f"COPY {arg}", from_context))
        elif instr == "USER":
            stage.user = arg
            stage.meta_lines.append(line)
        elif instr == "WORKDIR":
            stage.workdir = str(PurePosixPath(stage.workdir) / substitute(arg, stage.env))
            stage.workdir_set = True
            stage.meta_lines.append(line)
        elif instr == "ENV":
            words = shlex.split(arg)
            before = dict(stage.env)  # Docker expands $VARS with the values from before the line
            if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
                k, _, v = arg.partition(" ")
                stage.env[k] = substitute(v.strip(), before)
            else:
                for w in words:
                    k, eq, v = w.partition("=")
                    if not eq:
                        raise BuildError(f"ENV {arg}: expected KEY=VALUE")
                    stage.env[k] = substitute(v, before)
            stage.meta_lines.append(line)
        elif instr == "LABEL":
            for w in shlex.split(arg):
                k, eq, v = w.partition("=")
                if not eq:
                    raise BuildError(f"LABEL {arg}: expected KEY=VALUE")
                stage.labels[k] = v
            stage.meta_lines.append(line)
        elif instr == "ENTRYPOINT":
            stage.entrypoint = exec_form(arg, "ENTRYPOINT")
            stage.cmd = None  # Docker: an ENTRYPOINT drops the CMD inherited from FROM
            stage.meta_lines.append(line)
        elif instr == "CMD":
            stage.cmd = exec_form(arg, "CMD")
            stage.meta_lines.append(line)
        else:
            raise BuildError(f"{instr} {arg}: not understood by oci_archive.py in the final stage")
    if stage.base != "scratch" and stage.entrypoint is None and stage.cmd is None:
        stage.cmd = ["bash"]  # what debian images carry
    return stage


# --------------------------------------------------------------------------------------
# Deterministic tars


def normalize(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.mtime = EPOCH
    ti.uname = ti.gname = ""  # host names would leak into the digest
    ti.pax_headers = {}
    return ti


def tar_rootfs(root: str, out: str) -> None:
    """Writes ROOT as a layer: entries depth first in name order (parents before children),
    fixed mtime, numeric owners only. Runtime-owned directories are kept empty."""
    root = os.path.abspath(root)
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def walk(rel: str) -> None:
            full = os.path.join(root, rel) if rel else root
            for name in sorted(os.listdir(full)):
                r = f"{rel}/{name}" if rel else name
                ti = tar.gettarinfo(os.path.join(root, r), arcname=r)
                if ti is None:  # sockets and the like
                    continue
                ti = normalize(ti)
                if ti.isreg():
                    with open(os.path.join(root, r), "rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)
                if ti.isdir() and r not in RUNTIME_DIRS:
                    walk(r)

        walk("")
    os.replace(tmp, out)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class BaseInfo:
    """What the builder needs to know about the layers below the ones it writes."""

    entries: dict[str, tarfile.TarInfo]
    files: dict[str, bytes]

    def installed_packages(self) -> set[str]:
        status = self.files.get("var/lib/dpkg/status", b"").decode()
        installed = set()
        for para in status.split("\n\n"):
            fields = dict(ln.split(": ", 1) for ln in para.splitlines() if ": " in ln and not ln.startswith(" "))
            if fields.get("Status") == "install ok installed":
                installed.add(fields.get("Package", ""))
        return installed


def read_base(layer: str | None) -> BaseInfo:
    info = BaseInfo({}, {})
    if layer is None:
        return info
    wanted = {"etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "var/lib/dpkg/status"}
    with tarfile.open(layer) as tar:
        for ti in tar:
            name = ti.name.rstrip("/")
            if name.startswith("./"):
                name = name[2:]
            info.entries[name] = ti
            if name in wanted and ti.isreg():
                f = tar.extractfile(ti)
                assert f is not None
                info.files[name] = f.read()
    return info


class LayerWriter:
    """An in-memory layer whose entries are sorted by path when written."""

    def __init__(self, base: BaseInfo):
        self.base = base
        self.items: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p in self.items:
                continue
            # Repeat the lower layer's directory as it is: an upper layer's entry replaces
            # the directory's metadata, so it must not change owner or mode by accident.
            lower = self.base.entries.get(p)
            ti = tarfile.TarInfo(p)
            ti.type = tarfile.DIRTYPE
            ti.mode = lower.mode if lower is not None else 0o755
            ti.uid = lower.uid if lower is not None else 0
            ti.gid = lower.gid if lower is not None else 0
            self.items[p] = (normalize(ti), None)

    def add_dir(self, path: str, uid: int, gid: int, mode: int) -> None:
        path = path.strip("/")
        self._parents(path)
        ti = tarfile.TarInfo(path)
        ti.type = tarfile.DIRTYPE
        ti.mode, ti.uid, ti.gid = mode, uid, gid
        self.items[path] = (normalize(ti), None)

    def add_file(self, path: str, data: bytes, uid: int, gid: int, mode: int) -> None:
        path = path.strip("/")
        self._parents(path)
        ti = tarfile.TarInfo(path)
        ti.size = len(data)
        ti.mode, ti.uid, ti.gid = mode, uid, gid
        self.items[path] = (normalize(ti), data)

    def add_from_file(self, path: str, src: str, uid: int, gid: int, mode: int) -> None:
        with open(src, "rb") as f:
            self.add_file(path, f.read(), uid, gid, mode)

    def write(self, out: str) -> None:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.items, key=lambda p: p.split("/")):
                ti, data = self.items[path]
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)


# --------------------------------------------------------------------------------------
# The image


def account_files(stage: Stage, base: BaseInfo, layer: LayerWriter) -> None:
    """Does what groupadd/useradd would: append entries to the four account files."""
    if not stage.groups and not stage.users:
        return

    def lines(name: str) -> list[str]:
        if name not in base.files:
            if stage.base == "scratch":
                return []
            raise BuildError(f"the base layer has no /{name}")
        return base.files[name].decode().splitlines()

    passwd, group = lines("etc/passwd"), lines("etc/group")
    shadow, gshadow = lines("etc/shadow"), lines("etc/gshadow")

    def taken(entries: list[str], name: str, num: int) -> bool:
        for e in entries:
            f = e.split(":")
            if f[0] == name or (len(f) > 2 and f[2] == str(num)):
                return True
        return False

    for name, gid in stage.groups:
        if taken(group, name, gid):
            raise BuildError(f"groupadd: group {name} or gid {gid} already exists in the base")
        group.append(f"{name}:x:{gid}:")
        gshadow.append(f"{name}:!::")
    for u in stage.users:
        if taken(passwd, u.name, u.uid):
            raise BuildError(f"useradd: user {u.name} or uid {u.uid} already exists in the base")
        if not any(e.split(":")[2:3] == [str(u.gid)] for e in group):
            raise BuildError(f"useradd {u.name}: group {u.gid} does not exist")
        passwd.append(f"{u.name}:x:{u.uid}:{u.gid}:{u.comment}:{u.home}:{u.shell}")
        # useradd writes today's date in field 3; leave it empty to keep the layer stable.
        shadow.append(f"{u.name}:!*::0:99999:7:::")

    for name, content in (
        ("etc/passwd", passwd),
        ("etc/group", group),
        ("etc/shadow", shadow),
        ("etc/gshadow", gshadow),
    ):
        lower = base.entries.get(name)
        if lower is None and name in ("etc/shadow", "etc/gshadow"):
            continue
        mode, uid, gid = (lower.mode, lower.uid, lower.gid) if lower is not None else (0o644, 0, 0)
        layer.add_file(name, ("\n".join(content) + "\n").encode(), uid, gid, mode)


def build(args: argparse.Namespace) -> None:
    stage = parse_containerfile(args.containerfile)
    if stage.base == "scratch":
        if args.base_layer:
            raise BuildError("FROM scratch takes no --base-layer")
    elif not args.base_layer:
        raise BuildError(f"FROM {stage.base} needs --base-layer (a debootstrap rootfs tar)")
    base = read_base(args.base_layer)
    if args.base_layer:
        # The base layer comes from a cache keyed by the package list; check that it holds
        # what this Containerfile installs, so a mixed-up cache cannot pass unnoticed.
        missing = sorted(set(stage.packages) - base.installed_packages())
        if missing:
            raise BuildError(f"--base-layer {args.base_layer} lacks the packages {' '.join(missing)}")

    files = {os.path.basename(f): f for f in args.file}
    used: set[str] = set()

    layers: list[tuple[str, str]] = []  # (path of layer tar, history line)
    tmpdir = tempfile.mkdtemp(prefix="oci-archive-", dir=os.path.dirname(os.path.abspath(args.out)))
    try:
        if args.base_layer:
            created = (
                f"debootstrap --variant=minbase --include={','.join(stage.packages)} {stage.suite}, trimmed "
                f"(FROM {stage.base}" + "".join(f"; RUN {r}" for r in stage.run_lines if "apt-get" in r) + ")"
            )
            layers.append((args.base_layer, created))

        # Everything the RUN lines do besides installing packages: one layer, as one RUN.
        setup = LayerWriter(base)
        account_files(stage, base, setup)
        for d in stage.dirs:
            setup.add_dir(d.path, d.uid, d.gid, d.mode)
        # WORKDIR creates a missing directory (root-owned, like the classic builder).
        wd = stage.workdir.strip("/")
        if stage.workdir_set and wd and wd not in base.entries and wd not in setup.items:
            setup.add_dir(wd, 0, 0, 0o755)
        if setup.items:
            p = os.path.join(tmpdir, "setup.tar")
            setup.write(p)
            other_runs = [r for r in stage.run_lines if "apt-get" not in r]
            layers.append((p, "RUN " + " ; ".join(other_runs) if other_runs else f"WORKDIR {stage.workdir}"))

        context = os.path.dirname(os.path.abspath(args.containerfile))
        for i, c in enumerate(stage.copies):
            layer = LayerWriter(base)
            if c.from_context:
                src = os.path.join(context, c.source)
                if not os.path.isfile(src):
                    raise BuildError(f"{c.line}: {src} is not a file (a plain COPY takes single files)")
                # Docker keeps a context file's mode; use the two git records (0755 for
                # an executable, else 0644) so a checkout's umask cannot change the digest.
                mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
                layer.add_from_file(c.dest, src, c.uid, c.gid, c.mode if c.mode is not None else mode)
            else:
                name = PurePosixPath(c.source).name
                if name not in files:
                    raise BuildError(f"{c.line}: no --file named {name} was given")
                used.add(name)
                # A COPY of an executable: 0755 and root-owned unless the line says otherwise.
                layer.add_from_file(c.dest, files[name], c.uid, c.gid, c.mode if c.mode is not None else 0o755)
            p = os.path.join(tmpdir, f"copy{i}.tar")
            layer.write(p)
            layers.append((p, c.line))
        unused = set(files) - used
        if unused:
            raise BuildError(f"--file {', '.join(sorted(unused))}: no COPY in the final stage takes it")

        diff_ids = [sha256_file(p) for p, _ in layers]
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
        config = {
            "architecture": args.arch,
            "os": "linux",
            "created": created_at,
            "config": {
                "Env": [f"{k}={v}" for k, v in stage.env.items()],
                "Entrypoint": stage.entrypoint,
                "Cmd": stage.cmd,
                "WorkingDir": stage.workdir,
                **({"User": stage.user} if stage.user else {}),
                **({"Labels": stage.labels} if stage.labels else {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
            "history": [{"created": created_at, "created_by": h} for _, h in layers]
            + [{"created": created_at, "created_by": m, "empty_layer": True} for m in stage.meta_lines],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_id = hashlib.sha256(config_bytes).hexdigest()
        manifest = [
            {
                "Config": f"{config_id}.json",
                "RepoTags": args.tag,
                "Layers": [f"{d}/layer.tar" for d in diff_ids],
            }
        ]

        tmp_out = args.out + ".tmp"
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            seen = set()
            for (p, _), d in zip(layers, diff_ids, strict=True):
                if d in seen:
                    continue
                seen.add(d)
                dir_ti = normalize(tarfile.TarInfo(d))
                dir_ti.type, dir_ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(dir_ti)
                ti = normalize(tarfile.TarInfo(f"{d}/layer.tar"))
                ti.size, ti.mode = os.path.getsize(p), 0o644
                with open(p, "rb") as f:
                    tar.addfile(ti, f)
            for name, data in ((f"{config_id}.json", config_bytes), ("manifest.json", json.dumps(manifest).encode())):
                ti = normalize(tarfile.TarInfo(name))
                ti.size, ti.mode = len(data), 0o644
                tar.addfile(ti, io.BytesIO(data))
        os.replace(tmp_out, args.out)
        sizes = ", ".join(f"{os.path.getsize(p) / 1e6:.1f} MB" for p, _ in layers)
        print(f"{args.out}: {' '.join(args.tag)} sha256:{config_id} layers: {sizes}")
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("base-spec", help="print the suite and packages of the final stage")
    p.add_argument("containerfile")
    p = sub.add_parser("tar-rootfs", help="write a rootfs directory as a deterministic layer tar")
    p.add_argument("root")
    p.add_argument("out")
    p = sub.add_parser("build", help="write a docker-archive for a Containerfile's final stage")
    p.add_argument("containerfile")
    p.add_argument("--base-layer", help="layer tar of the FROM image (debootstrap rootfs)")
    p.add_argument("--file", action="append", default=[], help="prebuilt file for a COPY, matched by its name")
    p.add_argument("--tag", action="append", required=True, help="image name, e.g. localhost/maestro/agent:dev")
    p.add_argument("--arch", default=host_arch(), help="image architecture (default: this machine's)")
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        if args.cmd == "base-spec":
            stage = parse_containerfile(args.containerfile)
            print("scratch" if stage.base == "scratch" else " ".join([stage.suite, *sorted(set(stage.packages))]))
        elif args.cmd == "tar-rootfs":
            tar_rootfs(args.root, args.out)
        else:
            build(args)
    except BuildError as e:
        print(f"oci_archive.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
