#!/usr/bin/python3
"""scripts/run-tests.sh runs every stage and reports all failures at the end.

Runs the real script in a scratch copy of the repository layout, with fake
cmake/ctest/install-deps.sh that fail where a test says, and checks the
summary and the exit status.

    /usr/bin/python3 -m unittest -v test_run_tests
"""

import os
import shutil
import stat
import subprocess
import tempfile
import unittest

SOURCE = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# A fake tool: logs its arguments, fails (exit 3) when they match $FAIL_ON.
FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
if [[ -n "${FAIL_ON:-}" && "$(basename "$0") $*" =~ $FAIL_ON ]]; then exit 3; fi
exit 0
"""


class RunTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        root = self.dir.name
        os.makedirs(os.path.join(root, "scripts"))
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(os.path.join(SOURCE, "scripts", "run-tests.sh"), os.path.join(root, "scripts"))
        for path in ("bin/cmake", "bin/ctest", "scripts/install-deps.sh", "scripts/run-fuzz.sh"):
            full = os.path.join(root, path)
            with open(full, "w") as f:
                f.write(FAKE)
            os.chmod(full, os.stat(full).st_mode | stat.S_IEXEC)
        self.root = root
        self.log = os.path.join(root, "log")

    def tearDown(self):
        self.dir.cleanup()

    def run_script(self, fail_on="", *args):
        env = dict(os.environ, PATH=os.path.join(self.root, "bin") + ":" + os.environ["PATH"],
                   FAKE_LOG=self.log, FAIL_ON=fail_on)
        r = subprocess.run(["bash", os.path.join(self.root, "scripts", "run-tests.sh"), *args],
                           capture_output=True, text=True, env=env, timeout=60)
        with open(self.log) as f:
            calls = f.read().splitlines()
        return r, calls

    def summary(self, out):
        rows = out.split("== summary\n", 1)[1].splitlines()[1:]
        return {r[:18].strip(): r[18:47].strip() for r in rows if r[:18].strip() and "steps" not in r}

    def test_all_pass(self):
        r, calls = self.run_script()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("all 11 steps passed", r.stdout)
        for p in ("ci", "asan", "tsan"):
            self.assertIn(f"cmake --preset {p}", calls)
            self.assertIn(f"ctest --preset {p} -j {os.cpu_count()}", calls)
        self.assertIn("run-fuzz.sh 30", calls)

    def test_a_failing_build_does_not_hide_the_later_stages(self):
        r, calls = self.run_script(r"^cmake --build --preset ci")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        s = self.summary(r.stdout)
        self.assertEqual(s["ci build"], "FAILED (exit 3)")
        self.assertEqual(s["ci ctest"], "passed")  # the tests that were built still run
        self.assertEqual(s["asan ctest"], "passed")
        self.assertEqual(s["tsan ctest"], "passed")
        self.assertIn("1 of 11 steps FAILED, 0 not run", r.stdout)

    def test_failures_in_several_stages_are_all_reported(self):
        r, calls = self.run_script(r"^(scripts/install-deps.sh|install-deps.sh|ctest --preset ci|cmake --preset asan)")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        s = self.summary(r.stdout)
        self.assertEqual(s["deps"], "FAILED (exit 3)")
        self.assertEqual(s["ci ctest"], "FAILED (exit 3)")
        self.assertEqual(s["asan configure"], "FAILED (exit 3)")
        self.assertEqual(s["asan build"], "not run: configure failed")
        self.assertEqual(s["tsan ctest"], "passed")
        self.assertNotIn("cmake --build --preset asan -j %d" % os.cpu_count(), calls)
        self.assertIn("3 of 11 steps FAILED, 2 not run", r.stdout)

    def test_quick_runs_deps_and_ci_only(self):
        r, calls = self.run_script("", "--quick")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("cmake --preset asan", calls)
        self.assertNotIn("run-fuzz.sh 30", calls)
        self.assertIn("all 4 steps passed", r.stdout)


if __name__ == "__main__":
    unittest.main()
