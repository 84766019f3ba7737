#!/usr/bin/env python3
"""bench/gpu_overlap: the hidden-fraction summary, and run.sh end to end with
a stand-in for the GPU example (it prints the example's final line with a
step time that follows from its arguments).

    python3 -m unittest -v test_gpu_overlap
"""
import csv
import os
import stat
import subprocess
import tempfile
import unittest

import summarize

HERE = os.path.dirname(os.path.abspath(__file__))

# Step time: 1 ms of compute, plus per link an exposed share of a 2 ms
# average: local all of it every 4 steps (0.5 ms/step), d1 a quarter of
# that, d2 none, sync 2 ms every step. Exit 77 when STANDIN_NO_DEVICE is set.
STANDIN = r"""#!/usr/bin/env bash
[[ -n "${STANDIN_NO_DEVICE:-}" ]] && { echo "SKIP: no CUDA device"; exit 77; }
args="$*"
echo "$args" >> "$STANDIN_LOG"
ms=1.0
if [[ $args == *"--algo sync"* ]]; then ms=3.0
elif [[ $args == *"--tau 1000000"* ]]; then ms=1.0
elif [[ $args == *"--delay 0"* ]]; then ms=1.5
elif [[ $args == *"--delay 1"* ]]; then ms=1.125
elif [[ $args == *"--delay 2"* ]]; then ms=1.0
fi
echo "epoch 1/1  step 234"
echo "final test accuracy 0.8123 after 1 epochs; mean step time $ms ms"
"""


class HiddenFraction(unittest.TestCase):
    def test_definition(self):
        self.assertAlmostEqual(summarize.hidden_fraction(1.0, 1.5, 1.125), 0.75)
        self.assertAlmostEqual(summarize.hidden_fraction(1.0, 1.5, 1.0), 1.0)
        self.assertAlmostEqual(summarize.hidden_fraction(1.0, 1.5, 1.5), 0.0)

    def test_clamped_and_undefined(self):
        self.assertEqual(summarize.hidden_fraction(1.0, 1.5, 0.9), 1.0)  # faster than compute: noise
        self.assertEqual(summarize.hidden_fraction(1.0, 1.5, 1.8), 0.0)
        self.assertIsNone(summarize.hidden_fraction(1.0, 1.0, 1.0))  # nothing to hide


class RunScript(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.bin = os.path.join(self.dir.name, "standin")
        with open(self.bin, "w") as f:
            f.write(STANDIN)
        os.chmod(self.bin, os.stat(self.bin).st_mode | stat.S_IEXEC)
        self.out = os.path.join(self.dir.name, "out")
        self.env = dict(os.environ, STANDIN_LOG=os.path.join(self.dir.name, "args.log"))

    def tearDown(self):
        self.dir.cleanup()

    def run_script(self, *links, env=None):
        return subprocess.run(["bash", os.path.join(HERE, "run.sh"), self.bin, "/data", self.out, *links],
                              capture_output=True, text=True, timeout=60, env=env or self.env)

    def test_every_configuration_per_link_and_the_summary(self):
        r = self.run_script("2", "8")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(self.out, "gpu_overlap.csv")) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([(row["link_gbps"], row["config"]) for row in rows],
                         [(l, c) for l in ("2", "8") for c in ("compute", "local", "d1", "d2", "sync")])
        self.assertEqual({row["accuracy"] for row in rows}, {"0.8123"})
        d1 = next(row for row in rows if row["config"] == "d1")
        self.assertEqual((d1["tau"], d1["delay"], d1["step_ms"]), ("4", "1", "1.125"))
        with open(self.env["STANDIN_LOG"]) as f:
            args = f.read().splitlines()
        self.assertEqual(len(args), 10)
        self.assertTrue(all("--comm staged" in a and "--workers 4" in a and "--data-dir /data" in a for a in args))
        self.assertIn("--link-gbps 8", args[-1])
        with open(os.path.join(self.out, "gpu_overlap.md")) as f:
            md = f.read()
        self.assertIn("| 2 Gbit/s | 1.000 ms |", md)
        self.assertIn("1.125 ms (+12.5 %) | 75 % | 1.000 ms (+0.0 %) | 100 % |", md)

    def test_no_device_is_a_skip(self):
        r = self.run_script(env=dict(self.env, STANDIN_NO_DEVICE="1"))
        self.assertEqual(r.returncode, 77, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
