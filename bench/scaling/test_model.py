"""Tests of the scaling model (run: /usr/bin/python3 -m unittest test_model, in bench/scaling)."""
import math
import random
import unittest

import model

MIB = 2**20


class AllreduceTime(unittest.TestCase):
    def test_one_worker_never_communicates(self):
        link = model.Link(1e9 / 8, 1e-4)
        self.assertEqual(model.allreduce_seconds(1, 4 * MIB, link), 0.0)

    def test_ring_formula_dedicated_and_shared(self):
        b, alpha, s = 1e9 / 8, 1e-4, 4 * MIB
        ded = model.allreduce_seconds(4, s, model.Link(b, alpha, "dedicated"))
        self.assertAlmostEqual(ded, 2 * 3 / 4 * s / b + 2 * 3 * alpha, places=12)
        shared = model.allreduce_seconds(4, s, model.Link(b, alpha, "shared"))
        self.assertAlmostEqual(shared, 2 * 3 * s / b + 2 * 3 * alpha, places=12)
        # two workers: the shared link carries twice what each dedicated link does
        self.assertAlmostEqual(model.allreduce_seconds(2, s, model.Link(b, 0, "shared")),
                               2 * model.allreduce_seconds(2, s, model.Link(b, 0, "dedicated")), places=12)

    def test_dedicated_bandwidth_term_saturates_latency_grows(self):
        link = model.Link(1e9 / 8, 5e-5)
        s = 4 * MIB
        t1024 = model.allreduce_seconds(1024, s, link)
        self.assertAlmostEqual(t1024, 2 * 1023 / 1024 * s / link.bandwidth + 2 * 1023 * 5e-5, places=12)
        self.assertLess(2 * 1023 / 1024 * s / link.bandwidth, 2 * s / link.bandwidth)

    def test_bad_inputs(self):
        with self.assertRaises(ValueError):
            model.Link(0, 1e-4)
        with self.assertRaises(ValueError):
            model.Link(1e9, -1)
        with self.assertRaises(ValueError):
            model.Link(1e9, 0, "torus")
        with self.assertRaises(ValueError):
            model.allreduce_seconds(0, 10, model.Link(1e9, 0))


class StepTime(unittest.TestCase):
    def test_sync_local_dasgd(self):
        c, t, u = 0.100, 0.210, 0.001
        self.assertAlmostEqual(model.step_seconds(model.algorithm("sync"), c, t, u), c + t + u)
        self.assertAlmostEqual(model.step_seconds(model.algorithm("local", 4), c, t, u), c + t / 4 + u)
        # d = 1: the window (100 ms) hides 100 of 210 ms
        self.assertAlmostEqual(model.step_seconds(model.algorithm("dasgd-d1", 4), c, t, u), c + 0.110 / 4 + u)
        # d = 3: 300 ms of window, nothing exposed
        self.assertAlmostEqual(model.step_seconds(model.algorithm("dasgd-d3", 4), c, t, u), c + u)

    def test_adaptive_picks_smallest_covering_delay(self):
        self.assertEqual(model.adaptive_delay(0.127, 0.210, 4), 2)
        self.assertEqual(model.adaptive_delay(0.254, 0.210, 4), 1)
        self.assertEqual(model.adaptive_delay(0.105, 0.210, 4), 2)  # exactly covering
        self.assertEqual(model.adaptive_delay(0.050, 0.210, 4), 3)  # capped at tau - 1
        adaptive = model.algorithm("adaptive", 4)
        self.assertAlmostEqual(model.step_seconds(adaptive, 0.127, 0.210), 0.127)
        self.assertAlmostEqual(model.step_seconds(adaptive, 0.050, 0.210), 0.050 + 0.060 / 4)

    def test_algorithm_names_and_errors(self):
        self.assertEqual(model.algorithm("dasgd-d2", 8), model.Algorithm("dasgd-d2", 8, 2))
        self.assertEqual(model.algorithm("sync", 8).tau, 1)
        for bad in ("dasgd-d4", "dasgd-dx", "ring"):
            with self.assertRaises(ValueError):
                model.algorithm(bad, 4)


class Efficiency(unittest.TestCase):
    def test_definition_and_monotonic_decline(self):
        link = model.Link(1e9 / 8, 1e-4)
        c, s = 0.120, 4 * MIB
        self.assertEqual(model.predict(1, model.algorithm("sync"), c, s, link)[3], 1.0)
        effs = [model.predict(n, model.algorithm("sync"), c, s, link)[3] for n in (2, 8, 64, 1024)]
        self.assertTrue(all(a > b for a, b in zip(effs, effs[1:])))
        t, step, thr, eff = model.predict(8, model.algorithm("local", 4), c, s, link)
        self.assertAlmostEqual(thr, 8 / step)
        self.assertAlmostEqual(eff, thr / (8 * (1 / c)))

    def test_dasgd_never_worse_than_local_with_same_tau(self):
        link = model.Link(1e9 / 8, 2e-4)
        for n in (2, 16, 512):
            for c in (0.01, 0.1, 1.0):
                local = model.predict(n, model.algorithm("local", 4), c, 4 * MIB, link)[1]
                for d in (1, 2, 3):
                    self.assertLessEqual(model.predict(n, model.algorithm(f"dasgd-d{d}", 4), c, 4 * MIB, link)[1],
                                         local + 1e-15)


class Fit(unittest.TestCase):
    def test_recovers_a_known_link_from_noisy_samples(self):
        rng = random.Random(3)
        for topology in ("shared", "dedicated"):
            truth = model.Link(0.95e9 / 8, 3e-4, topology)
            samples = []
            for n in (2, 4, 8):
                for s in (256 * 2**10, MIB, 4 * MIB):
                    t = model.allreduce_seconds(n, s, truth) * (1 + rng.uniform(-0.02, 0.02))
                    samples.append((n, s, t))
            fitted = model.fit_link(samples, topology)
            self.assertAlmostEqual(fitted.bandwidth / truth.bandwidth, 1.0, delta=0.05)
            self.assertAlmostEqual(fitted.alpha / truth.alpha, 1.0, delta=0.3)
            self.assertEqual(fitted.topology, topology)

    def test_negative_latency_is_clamped(self):
        # times exactly proportional to bytes, minus a little: alpha would be < 0
        b = 1e8
        samples = [(n, s, 2 * (n - 1) * s / b - 1e-4) for n in (2, 4) for s in (MIB, 4 * MIB)]
        fitted = model.fit_link(samples, "shared")
        self.assertEqual(fitted.alpha, 0.0)
        self.assertAlmostEqual(fitted.bandwidth / b, 1.0, delta=0.02)

    def test_too_few_samples(self):
        with self.assertRaises(ValueError):
            model.fit_link([(1, MIB, 0.1), (2, MIB, 0.1)], "shared")


if __name__ == "__main__":
    unittest.main()
