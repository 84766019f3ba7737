"""Tests of the overlap summary (run: /usr/bin/python3 -m unittest test_summarize, in bench/overlap)."""
import unittest

import summarize


def row(alg, rep, step, compute_ms=100.0, allreduce=200.0, tau=4, delay=0, per_step=None):
    if per_step is None:
        per_step = 0.0 if alg == "compute" else (1.0 if alg == "sync" else 1.0 / tau)
    return {"label": "1gbit", "ranks": 4, "params": 1, "payload_bytes": 4, "rep": rep,
            "compute_ratio": 0.5, "compute_ms": compute_ms, "algorithm": alg, "tau": tau, "delay": delay,
            "averages_per_step": per_step, "allreduce_ms": allreduce, "step_ms": step, "step_ms_mean": step,
            "update_ms": 1.0, "wait_ms": 0.0, "cpu_frac_max": 0.05, "final_loss": 0.04, "delay_min": delay,
            "delay_max": delay, "late_steps": 0}


class HiddenFraction(unittest.TestCase):
    def test_definition_and_clamping(self):
        self.assertAlmostEqual(summarize.hidden_fraction(20.0, 50.0), 0.6)
        self.assertEqual(summarize.hidden_fraction(-3.0, 50.0), 1.0)  # faster than compute-only: noise
        self.assertEqual(summarize.hidden_fraction(80.0, 50.0), 0.0)
        self.assertIsNone(summarize.hidden_fraction(1.0, 0.0))


class Summary(unittest.TestCase):
    def setUp(self):
        rows = []
        for rep, jitter in ((0, 0.0), (1, 2.0)):
            rows += [row("compute", rep, 101.0 + jitter, tau=0),
                     row("sync", rep, 301.0 + jitter, tau=1),
                     row("dasgd-d1", rep, 126.0 + jitter, delay=1),   # (200 - 100) / 4 = 25 ms exposed
                     row("dasgd-d2", rep, 102.0 + jitter, delay=2),   # hidden
                     row("dasgd-d3", rep, 101.5 + jitter, delay=3),
                     row("adaptive", rep, 101.0 + jitter, delay=2)]
        self.table = {s["algorithm"]: s for s in summarize.summarise(rows)}

    def test_medians_and_spread_over_repetitions(self):
        sync = self.table["sync"]
        self.assertEqual(sync["reps"], 2)
        self.assertAlmostEqual(sync["step_ms"], 302.0)
        self.assertAlmostEqual(sync["step_ms_min"], 301.0)
        self.assertAlmostEqual(sync["step_ms_max"], 303.0)
        self.assertAlmostEqual(sync["exposed_ms"], 200.0)
        self.assertAlmostEqual(sync["comm_ms"], 200.0)
        self.assertAlmostEqual(sync["hidden"], 0.0)

    def test_dasgd_rows(self):
        d1, d2 = self.table["dasgd-d1"], self.table["dasgd-d2"]
        self.assertAlmostEqual(d1["comm_ms"], 50.0)
        self.assertAlmostEqual(d1["hidden"], 1 - 25.0 / 50.0)
        self.assertFalse(d1["window_covers_allreduce"])  # 1 x 101 ms < 200 ms
        self.assertFalse(d1["within_goal"])
        self.assertTrue(d2["window_covers_allreduce"])
        self.assertTrue(d2["within_goal"])
        self.assertAlmostEqual(d2["hidden"], 1 - 1.0 / 50.0)
        self.assertIsNone(self.table["compute"]["hidden"])

    def test_adaptive_compared_with_smallest_hiding_fixed_delay(self):
        a = self.table["adaptive"]
        self.assertEqual(a["smallest_hiding_delay"], 2)
        self.assertEqual(a["delays"], "2/2")

    def test_missing_baseline_is_an_error(self):
        with self.assertRaises(SystemExit):
            summarize.summarise([row("sync", 0, 300.0, tau=1)])


if __name__ == "__main__":
    unittest.main()
