#!/usr/bin/python3
"""Tests of check_deps.py itself: it must fail for the package lists that
would have broken a fresh machine, and its scanners must see what a script
imports, runs and reads.

    DASGD_BUILD_DIR=build/ci /usr/bin/python3 -m unittest -v test_check_deps
"""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.realpath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("DASGD_BUILD_DIR")
CTEST = os.environ.get("DASGD_CTEST", "ctest")
sys.path.insert(0, HERE)
import check_deps  # noqa: E402


def run_checker(*args):
    cmd = [sys.executable, os.path.join(HERE, "check_deps.py"), "--source", SOURCE, "--ctest", CTEST]
    if BUILD:
        cmd += ["--build", BUILD]
    return subprocess.run(cmd + list(args), capture_output=True, text=True)


def listed_packages():
    out = subprocess.run(["bash", os.path.join(SOURCE, "scripts", "install-deps.sh"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


class PackageLists(unittest.TestCase):
    def with_list(self, packages):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(packages) + "\n")
        try:
            return run_checker("--packages-file", f.name)
        finally:
            os.unlink(f.name)

    def test_list_of_the_issue_misses_numpy(self):
        r = run_checker("--packages-file", os.path.join(HERE, "fixtures", "install-deps-before-issue11.txt"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"MISSING +python numpy .*bench/scaling/model\.py.*python3-numpy")

    def test_missing_dataset_package(self):
        r = self.with_list([p for p in listed_packages() if p != "dataset-fashion-mnist"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"MISSING +file /usr/share/datasets/fashion-mnist .*dataset-fashion-mnist")

    def test_missing_matplotlib(self):
        r = self.with_list([p for p in listed_packages() if p != "python3-matplotlib"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"MISSING +python matplotlib .*scripts/plot_training\.py")

    def test_named_package_that_is_not_installed(self):
        r = self.with_list(listed_packages() + ["dasgd-no-such-package"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("names dasgd-no-such-package, which is not installed", r.stdout)


class Scanners(unittest.TestCase):
    """The scanners on a small made-up source tree."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.root = self.dir.name
        self.needs = check_deps.Needs(self.root, None)

    def tearDown(self):
        self.dir.cleanup()

    def write(self, rel, text):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def kinds(self):
        return set(self.needs.items)

    def test_python_imports_follow_local_modules(self):
        self.write("bench/helper.py", "import numpy as np\nfrom scipy.optimize import curve_fit\n")
        self.needs.enqueue(self.write("bench/test_x.py", "import os, json\nimport helper\n"), "t")
        self.needs.drain()
        self.assertEqual({n for k, n in self.kinds() if k == "python"}, {"numpy", "scipy"})

    def test_shell_commands_wrappers_and_called_scripts(self):
        self.write("scripts/inner.sh", "#!/usr/bin/env bash\ntc qdisc add dev lo root tbf\n")
        self.needs.enqueue(self.write("scripts/outer.sh", """#!/usr/bin/env bash
set -euo pipefail
run() { echo "== $*"; "$@"; }
# smpirun in a comment is not a command
echo 'ip in quotes is not one either'
run cmake --build x
ip netns add t && mpiexec -n 2 prog | sort
"$root/scripts/inner.sh" --rate 1
"""), "t")
        self.needs.drain()
        commands = {n for k, n in self.kinds() if k == "command"}
        self.assertTrue({"cmake", "ip", "mpiexec", "sort", "tc"} <= commands, commands)
        self.assertNotIn("smpirun", commands)
        self.assertNotIn("run", commands)

    def test_cmake_packages_programs_and_paths(self):
        self.needs.enqueue(self.write("CMakeLists.txt", """
find_package(Torch CONFIG QUIET)  # find_package(Ignored) in a comment
find_program(SMPIRUN NAMES smpirun smpirun-3 DOC "SimGrid")
execute_process(COMMAND clang-14 --version)
set(_data /usr/share/datasets/fashion-mnist)
"""), "t")
        self.needs.drain()
        self.assertIn(("cmake", "Torch"), self.kinds())
        self.assertNotIn(("cmake", "Ignored"), self.kinds())
        self.assertIn(("program", "smpirun|smpirun-3"), self.kinds())
        self.assertIn(("command", "clang-14"), self.kinds())

    def test_unknown_cmake_package_and_module_fail(self):
        self.needs.add("cmake", "SomethingNew", "t")
        self.needs.add("python", "dasgd_no_such_module", "t")
        db = check_deps.PackageDb()
        results = check_deps.resolve(self.needs, db, db.closure(db.base), set())
        self.assertEqual([ok for ok, _ in results], [False, False])


@unittest.skipUnless(BUILD, "DASGD_BUILD_DIR is not set")
class ThisBuild(unittest.TestCase):
    def test_everything_is_installed_by_install_deps(self):
        r = run_checker()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
