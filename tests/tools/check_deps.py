#!/usr/bin/python3
"""Checks that everything dasgd's test suite, main example and plots run or
import comes from a Debian package that scripts/install-deps.sh installs.

    /usr/bin/python3 tests/tools/check_deps.py --build build/ci [-v]

What it looks at:
  - every ctest test of the build folder (ctest --show-only=json-v1): the
    programs and files its command names; the scripts among them (.sh, .py,
    .cmake, python -m modules) are scanned in turn;
  - ENTRY_POINTS: the README commands (scripts/run-tests.sh,
    scripts/run-example.sh), the example's plot, the slow-link benchmarks,
    and the scripts they call;
  - every CMakeLists.txt and .cmake file: find_package, find_program and
    execute_process(COMMAND literal), since configuring is part of the tests.
In those files: python imports (resolved with this interpreter, which must be
/usr/bin/python3), shell command words, absolute paths under /usr, /bin,
/sbin, /lib; each is mapped to its Debian package (dpkg -S, or the table of
CMake package names below).

A need is met when its package is one install-deps.sh names, one of their
dependencies (Depends/Pre-Depends, what apt installs with
--no-install-recommends), or an essential / priority "required" package (on
every Debian system). Things that come with the machine image rather than
from Debian (the CUDA toolkit and driver under /usr/local, nvidia-smi) are
reported and not checked. Exit status: 0 all met, 1 some not met, 2 usage.
"""

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys

IMAGE = "<machine image>"
OURS = "<this project>"

# find_package names -> the Debian package providing them.
CMAKE_PACKAGES = {
    "Threads": "libc6-dev",
    "MPI": "libopenmpi-dev",
    "doctest": "doctest-dev",
    "Eigen3": "libeigen3-dev",
    "CLI11": "libcli11-dev",
    "ZLIB": "zlib1g-dev",
    "Torch": "libtorch-dev",
    "SimGrid": "libsimgrid-dev",
    "Python3": "python3",
    "PkgConfig": "pkg-config",
    "CUDAToolkit": IMAGE,
    "dasgd": OURS,
}
# Programs of the machine image (NVIDIA driver and CUDA toolkit), not Debian's.
IMAGE_PROGRAMS = {"nvcc", "nvidia-smi", "compute-sanitizer", "ncu", "nsys"}
# Commands README gives for this kind of machine (besides the ctest tests).
ENTRY_POINTS = (
    "scripts/run-tests.sh", "scripts/run-example.sh", "scripts/plot_training.py",
    "bench/overlap/run_overlap.sh", "tests/mpi/run_progress_probe.sh",
    "bench/wire_outer/run.sh", "bench/hierarchical/run.sh",
)
# Scripts not scanned, with the reason.
NOT_SCANNED = {
    "scripts/install-deps.sh": "installs the packages itself (apt-get/dpkg, sudo when not root)",
}
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SHELL_WORDS = set("""
    if then else elif fi for in while until do done case esac function select time
    local export readonly declare typeset return set unset shift cd pushd popd echo printf
    read trap wait kill exit exec eval source . : true false test [ [[ ]] ] ! { } ( ) break
    continue command builtin type hash ulimit umask getopts let shopt alias jobs fg bg
    disown mapfile readarray compgen complete enable help history logout suspend times
""".split())


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- Debian package database ------------------------------------------------

class PackageDb:
    """Installed packages: dependencies, provides, essential/required."""

    def __init__(self):
        fmt = "${Package}\\t${Status}\\t${Essential}\\t${Priority}\\t${Provides}\\t${Pre-Depends}\\t${Depends}\\n"
        out = run(["dpkg-query", "-W", "-f", fmt]).stdout
        self.deps, self.base = {}, set()
        self.provided_by = {}
        for line in out.splitlines():
            f = line.split("\t")
            if len(f) < 7 or "install ok installed" not in f[1]:
                continue
            name = f[0]
            self.deps[name] = [alt for alt in split_deps(f[5]) + split_deps(f[6])]
            if f[2] == "yes" or f[3] == "required":
                self.base.add(name)
            for alt in split_deps(f[4]):
                for p in alt:
                    self.provided_by.setdefault(p, []).append(name)

    def installed(self, name):
        return name in self.deps

    def closure(self, roots):
        """Packages apt installs for roots (the installed alternative of each |)."""
        seen, todo = set(), list(roots)
        while todo:
            p = todo.pop()
            for cand in [p] + self.provided_by.get(p, []):
                if cand in self.deps and cand not in seen:
                    seen.add(cand)
                    for alts in self.deps[cand]:
                        pick = next((a for a in alts if a in self.deps or a in self.provided_by), None)
                        if pick:
                            todo.append(pick)
        return seen


def split_deps(field):
    """'a (>= 1) | b, c:any' -> [['a', 'b'], ['c']]"""
    out = []
    for group in field.split(","):
        alts = [re.sub(r"[\s(\[].*$", "", a.strip()).split(":")[0] for a in group.split("|")]
        alts = [a for a in alts if a]
        if alts:
            out.append(alts)
    return out


def owners(paths):
    """dpkg -S for many paths at once: {path: [packages]} (merged-/usr aware)."""
    variants = {}
    for p in paths:
        cands = {p, os.path.realpath(p)}
        for c in list(cands):
            if c.startswith("/usr/") and c.split("/")[2] in ("bin", "sbin", "lib", "lib64"):
                cands.add(c[4:])
            elif c.split("/")[1] in ("bin", "sbin", "lib", "lib64"):
                cands.add("/usr" + c)
        variants[p] = cands
    every = sorted(set().union(*variants.values())) if variants else []
    found = {}
    for i in range(0, len(every), 200):
        out = run(["dpkg-query", "-S"] + every[i:i + 200]).stdout
        for line in out.splitlines():
            if line.startswith("diversion ") or ": " not in line:
                continue
            pkgs, path = line.split(": ", 1)
            found.setdefault(path, set()).update(x.strip().split(":")[0] for x in pkgs.split(","))
    return {p: sorted(set().union(*(found.get(c, set()) for c in cands))) for p, cands in variants.items()}


# --- what the suite needs -----------------------------------------------------

class Needs:
    """(kind, name, where) -> how to resolve it."""

    def __init__(self, source, build):
        self.source, self.build = source, build
        self.items = {}      # (kind, name) -> set of places
        self.scanned = set()
        self.queue = []

    def add(self, kind, name, where):
        self.items.setdefault((kind, name), set()).add(where)

    def rel(self, path):
        return os.path.relpath(path, self.source)

    def enqueue(self, path, where):
        path = os.path.realpath(path)
        if path in self.scanned or not os.path.isfile(path):
            return
        if self.rel(path) in NOT_SCANNED:
            return
        self.scanned.add(path)
        self.queue.append((path, where))

    def under(self, path, root):
        return root and os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)

    def token(self, tok, where, base_dir=None):
        """An argument or word that may name a file: classify it."""
        for part in re.split(r"[;=]", tok):
            if not part.startswith("/"):
                continue
            if self.under(part, self.build):
                continue
            if self.under(part, self.source):
                if os.path.isfile(part):
                    self.enqueue(part, where)
                continue
            if os.path.exists(part) and re.match(r"^/(usr|bin|sbin|lib|lib64|opt)/", part):
                self.add("file", os.path.normpath(part), where)

    def drain(self):
        while self.queue:
            path, where = self.queue.pop(0)
            name = os.path.basename(path)
            try:
                text = open(path, encoding="utf-8", errors="replace").read()
            except OSError:
                continue
            here = self.rel(path)
            if name.endswith(".py"):
                self.scan_python(path, text, here)
            elif name.endswith(".sh") or text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/"):
                self.scan_shell(path, text, here)
            elif name.endswith(".cmake") or name == "CMakeLists.txt":
                self.scan_cmake(path, text, here)
            self.scan_paths(text, here)

    def scan_paths(self, text, here):
        for m in re.finditer(r"(?<![\w$}.-])(/(?:usr|bin|sbin|lib|lib64|opt)/[A-Za-z0-9_.+/-]+)", text):
            p = m.group(1).rstrip(".")
            # A top folder (/usr/bin) belongs to every package: not a need.
            if os.path.exists(p) and not (os.path.isdir(p) and p.rstrip("/").count("/") <= 2):
                self.add("file", os.path.normpath(p), here)

    def scan_python(self, path, text, here):
        try:
            tree = ast.parse(text, filename=path)
        except SyntaxError as e:
            self.add("error", f"cannot parse: {e}", here)
            return
        folder = os.path.dirname(path)
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                local = os.path.join(folder, top)
                if os.path.isfile(local + ".py"):
                    self.enqueue(local + ".py", here)
                elif os.path.isdir(local):
                    continue
                elif top not in sys.stdlib_module_names:
                    self.add("python", top, here)

    def scan_shell(self, path, text, here):
        functions = set(re.findall(r"^\s*(?:function\s+)?([A-Za-z_][\w-]*)\s*\(\)", text, re.M))
        body = re.sub(r"<<-?\s*'?(\w+)'?.*?^\s*\1\s*$", "", text, flags=re.S | re.M)  # heredocs
        for raw in body.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw)
            self.script_refs(line.split(), path, here)
            # Quoted text, arithmetic, [[ tests ]] and ${expansions} hold no commands.
            line = re.sub(r"'[^']*'", "''", line)
            line = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line)
            line = re.sub(r"\$\(\(.*?\)\)", "0", line)
            line = re.sub(r"\(\(.*?\)\)", "true", line)               # (( arithmetic ))
            line = re.sub(r"\b\w+\+?=\([^)]*\)", "x=1", line)          # arrays: a=(x y)
            line = re.sub(r"^\s*[^\s()][^()]*?\)(?=\s|$)", "", line)     # case patterns: x|y)
            line = re.sub(r"\[\[.*?\]\]", "true", line)
            line = re.sub(r"\$\{[^}]*\}", "x", line)
            for seg in re.split(r"\|\||&&|[|;&`]|\$\(|\(|\)|\{|\}", line):
                words = seg.split()
                while words and (re.match(r"^\w+(\[.*\])?\+?=", words[0]) or
                                 words[0] in ("then", "do", "else", "elif", "if", "while", "until",
                                              "!", "exec", "time", "command", "nice", "env",
                                              "sudo", "$sudo", "xargs")):
                    words = words[1:]
                if words and words[0] == "timeout":
                    words = [w for w in words[1:] if not re.match(r"^-|^\d", w)]
                if not words:
                    continue
                w = words[0].strip("\"")
                if w in functions:
                    # A wrapper (step "name" cmake --build ...): its first
                    # argument that names a program is a command.
                    for nxt in words[1:]:
                        if re.match(r"^[a-z][a-z0-9_.+-]*$", nxt) and (
                                nxt in IMAGE_PROGRAMS or shutil.which(nxt, path=SYSTEM_PATH)):
                            self.add("command", nxt, here)
                            break
                if w in SHELL_WORDS or w in functions or w.startswith(("$", "-", "\"", "./")):
                    continue
                if re.match(r"^[a-z][a-z0-9_.+-]*$", w):
                    self.add("command", w, here)

    def script_refs(self, words, path, here):
        """Words naming another script of the repository ($root/scripts/x.sh, scripts/x.py)."""
        for w in words:
            w = w.strip("\"'")
            m = re.search(r"((?:scripts|bench|tests|examples)/[\w/.-]+\.(?:sh|py|cmake))$", w)
            if m:
                for base in (self.source, os.path.dirname(path)):
                    cand = os.path.join(base, m.group(1))
                    if os.path.isfile(cand):
                        self.enqueue(cand, here)
                        break
            self.token(w, here)

    def scan_cmake(self, path, text, here):
        code = re.sub(r"#.*$", "", text, flags=re.M)
        for m in re.finditer(r"\bfind_package\s*\(\s*([A-Za-z0-9_]+)", code, re.I):
            self.add("cmake", m.group(1), here)
        for m in re.finditer(r"\bfind_program\s*\(\s*\w+\s+([^)]*)\)", code, re.I):
            args = m.group(1).split()
            if args and args[0] == "NAMES":
                names = []
                for a in args[1:]:
                    if a.isupper():
                        break
                    names.append(a)
            else:
                names = args[:1]
            names = [n for n in names if not n.startswith("$")]
            if names:
                self.add("program", "|".join(names), here)
        # execute_process runs at configure time (add_test commands come from ctest).
        for m in re.finditer(r"\bexecute_process\s*\(\s*COMMAND\s+([A-Za-z][\w.+-]*)", code, re.I):
            self.add("command", m.group(1), here)


# --- resolution --------------------------------------------------------------

def resolve(needs, db, accepted, listed):
    """[(ok, line)] for every need."""
    files = {name for (kind, name) in needs.items if kind == "file"}
    commands = {}
    for (kind, name) in needs.items:
        if kind in ("command", "program"):
            for alt in name.split("|"):
                if alt in IMAGE_PROGRAMS:
                    continue
                p = shutil.which(alt, path=SYSTEM_PATH)
                if p:
                    commands[alt] = p
                    files.add(p)
    modules = {}
    for (kind, name) in needs.items:
        if kind == "python":
            import importlib.util
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec and spec.origin and spec.origin not in ("built-in", "frozen"):
                modules[name] = spec.origin
                files.add(spec.origin)
            elif spec:
                modules[name] = None
    own = owners(sorted(files))

    def verdict(pkgs):
        if not pkgs:
            return None, "no Debian package owns it"
        for p in pkgs:
            if p in listed:
                return True, f"{p} (named by install-deps.sh)"
        for p in pkgs:
            if p in accepted:
                return True, f"{p} (installed with the packages install-deps.sh names, or on every Debian system)"
        return False, f"{', '.join(pkgs)}, which install-deps.sh does not install"

    results = []
    for (kind, name), places in sorted(needs.items.items()):
        where = ", ".join(sorted(places)[:3]) + (" ..." if len(places) > 3 else "")
        what = f"{kind} {name}"
        if kind == "error":
            results.append((False, f"{what} ({where})"))
            continue
        if kind == "cmake":
            pkg = CMAKE_PACKAGES.get(name)
            if pkg is None:
                results.append((False, f"{what} ({where}): not in check_deps.py's CMAKE_PACKAGES table; "
                                       "add the Debian package that provides it"))
            elif pkg in (IMAGE, OURS):
                results.append((True, f"{what}: {pkg}"))
            else:
                ok, why = verdict([pkg])
                results.append((bool(ok), f"{what} ({where}): {why}"))
            continue
        if kind in ("command", "program"):
            alts = name.split("|")
            if any(a in IMAGE_PROGRAMS for a in alts):
                results.append((True, f"{what}: {IMAGE}"))
                continue
            found = [a for a in alts if a in commands]
            if not found:
                results.append((False, f"{what} ({where}): not found on {SYSTEM_PATH}"))
                continue
            ok, why = verdict(own.get(commands[found[0]], []))
            results.append((bool(ok), f"{what} = {commands[found[0]]} ({where}): {why}"))
            continue
        if kind == "python":
            if name not in modules:
                results.append((False, f"{what} ({where}): not importable by {sys.executable}; "
                                       f"install its Debian package (python3-{name.lower()}?) and "
                                       "name it in install-deps.sh"))
                continue
            if modules[name] is None:
                results.append((True, f"{what}: built into {sys.executable}"))
                continue
            ok, why = verdict(own.get(modules[name], []))
            results.append((bool(ok), f"{what} = {modules[name]} ({where}): {why}"))
            continue
        if kind == "file":
            if re.match(r"^/(usr/local|opt)(/|$)", name):
                results.append((True, f"{what}: {IMAGE}"))
                continue
            ok, why = verdict(own.get(name, []))
            results.append((bool(ok), f"{what} ({where}): {why}"))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..")))
    ap.add_argument("--build", help="configured build folder whose ctest tests are checked")
    ap.add_argument("--ctest", default="ctest")
    ap.add_argument("--packages-file", help="package names, one a line (default: install-deps.sh --list)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the needs that are met too")
    a = ap.parse_args()
    src = os.path.realpath(a.source)

    if a.packages_file:
        with open(a.packages_file) as f:
            listed = {l.split("#")[0].strip() for l in f} - {""}
    else:
        r = run(["bash", os.path.join(src, "scripts", "install-deps.sh"), "--list"])
        if r.returncode != 0:
            sys.exit(f"check_deps: scripts/install-deps.sh --list failed: {r.stderr}")
        listed = set(r.stdout.split())

    db = PackageDb()
    problems = [f"install-deps.sh names {p}, which is not installed (run scripts/install-deps.sh)"
                for p in sorted(listed) if not db.installed(p)]
    accepted = db.closure(listed) | db.closure(db.base)

    needs = Needs(src, os.path.realpath(a.build) if a.build else None)
    if a.build:
        r = run([a.ctest, "--show-only=json-v1"], cwd=a.build)
        if r.returncode != 0:
            sys.exit(f"check_deps: ctest --show-only failed in {a.build}: {r.stderr}")
        for t in json.loads(r.stdout).get("tests", []):
            cmd = t.get("command") or []
            where = "ctest " + t["name"]
            props = {p["name"]: p["value"] for p in t.get("properties", [])}
            for tok in cmd:
                needs.token(tok, where)
            if cmd and "python" in os.path.basename(cmd[0]):
                # python -m unittest test_x: modules found in the working directory
                wd = props.get("WORKING_DIRECTORY", a.build)
                for tok in cmd[1:]:
                    if re.match(r"^[A-Za-z_][\w.]*$", tok):
                        needs.enqueue(os.path.join(wd, tok.replace(".", os.sep) + ".py"), where)
    for entry in ENTRY_POINTS:
        needs.enqueue(os.path.join(src, entry), "README")
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build")) and d != "__pycache__"]
        for n in names:
            if n == "CMakeLists.txt" or n.endswith(".cmake"):
                needs.enqueue(os.path.join(root, n), "configure")
    needs.drain()

    results = resolve(needs, db, accepted, listed)
    failed = [line for ok, line in results if not ok] + problems
    for ok, line in results:
        if not ok or a.verbose:
            print(("ok       " if ok else "MISSING  ") + line)
    for p in problems:
        print("MISSING  " + p)
    print(f"check_deps: {len(results)} needs from {len(needs.scanned)} files, "
          f"{len(failed)} not met, {len(listed)} packages named by install-deps.sh")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
