#!/usr/bin/python3
"""scripts/check_torch_wheel.sh configures against the libtorch it is given.

A PyTorch wheel's TorchConfig.cmake finds Caffe2 and libc10 with PATHS next
to itself, which CMake searches after the system folders, so with Debian's
libtorch-dev installed a 2.x build picked Debian's Caffe2 config and its
libc10 1.13 (the programs then aborted at load). A fake torch tree that
searches the same way, and a stand-in project, run through the real script
with the real cmake (--configure-only), must resolve to the fake tree.

    /usr/bin/python3 -m unittest -v test_check_torch_wheel
"""

import os
import shutil
import subprocess
import tempfile
import unittest

SOURCE = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# What the real TorchConfig.cmake does to find its parts (same calls).
TORCH_CONFIG = """
get_filename_component(TORCH_INSTALL_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../../" ABSOLUTE)
find_package(Caffe2 REQUIRED PATHS ${CMAKE_CURRENT_LIST_DIR}/../Caffe2)
find_library(C10_LIBRARY c10 PATHS "${TORCH_INSTALL_PREFIX}/lib")
set(TORCH_FOUND TRUE)
"""

PROJECT = """
cmake_minimum_required(VERSION 3.20)
project(stand_in LANGUAGES C)
find_package(Torch CONFIG REQUIRED)
"""


class CheckTorchWheel(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        root = self.root = self.dir.name
        os.makedirs(os.path.join(root, "scripts"))
        for script in ("check_torch_wheel.sh", "torch_config.sh"):
            shutil.copy(os.path.join(SOURCE, "scripts", script), os.path.join(root, "scripts"))
        with open(os.path.join(root, "CMakeLists.txt"), "w") as f:
            f.write(PROJECT)
        self.torch = os.path.join(root, "wheel", "torch")
        for sub in ("share/cmake/Torch", "share/cmake/Caffe2", "lib"):
            os.makedirs(os.path.join(self.torch, sub))
        with open(os.path.join(self.torch, "share/cmake/Torch/TorchConfig.cmake"), "w") as f:
            f.write(TORCH_CONFIG)
        with open(os.path.join(self.torch, "share/cmake/Caffe2/Caffe2Config.cmake"), "w") as f:
            f.write("set(CAFFE2_FOUND TRUE)\n")
        open(os.path.join(self.torch, "lib/libc10.so"), "w").close()

    def tearDown(self):
        self.dir.cleanup()

    def run_script(self, *args):
        return subprocess.run(["bash", os.path.join(self.root, "scripts", "check_torch_wheel.sh"), *args],
                              cwd=self.root, capture_output=True, text=True, timeout=120)

    def cache(self):
        values = {}
        with open(os.path.join(self.root, "build", "torch-wheel", "CMakeCache.txt")) as f:
            for line in f:
                if ":" in line and "=" in line and not line.startswith(("//", "#")):
                    key, value = line.rstrip("\n").split("=", 1)
                    values[key.split(":")[0]] = value
        return values

    def test_resolves_caffe2_and_c10_inside_the_given_tree(self):
        r = self.run_script("--configure-only", self.torch)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        c = self.cache()
        self.assertEqual(c["Torch_DIR"], os.path.join(self.torch, "share/cmake/Torch"))
        self.assertEqual(c["Caffe2_DIR"], os.path.join(self.torch, "share/cmake/Caffe2"))
        self.assertEqual(os.path.realpath(c["C10_LIBRARY"]), os.path.join(self.torch, "lib/libc10.so"))

    def test_a_tree_without_caffe2_is_refused(self):
        shutil.rmtree(os.path.join(self.torch, "share/cmake/Caffe2"))
        r = self.run_script("--configure-only", self.torch)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("no Caffe2Config.cmake", r.stderr)

    def test_a_folder_without_torch_is_refused(self):
        r = self.run_script("--configure-only", self.root + "/scripts")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("no cmake/Torch/TorchConfig.cmake", r.stderr)


if __name__ == "__main__":
    unittest.main()
