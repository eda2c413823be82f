"""ocr.runinfo: what a run's float results depend on besides its config."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys

import cv2
import numpy as np
import PIL
import pytest
import torch

from ocr.runinfo import cpu_model, environment_line, run_environment

ENV = {
    "torch_threads": 4,
    "torch_interop_threads": 4,
    "thread_variables": {
        "OMP_NUM_THREADS": None,
        "MKL_NUM_THREADS": None,
        "OPENBLAS_NUM_THREADS": None,
    },
    "torch": "2.13.0+cpu",
    "numpy": "2.4.6",
    "opencv": "5.1.0",
    "pillow": "13.0.0",
    "lmdb_image_cache": "0.1.0",
    "python": "3.11.7",
    "platform": "Linux-6.1-x86_64",
    "machine": "x86_64",
    "cpu": "AMD EPYC 7B13",
    "cpus": 2,
}


def test_environment_records_torch_intra_op_threads(one_thread):
    assert run_environment()["torch_threads"] == 1


def test_environment_records_the_inter_op_threads():
    assert run_environment()["torch_interop_threads"] == torch.get_num_interop_threads()


def test_environment_records_thread_variables_and_none_when_unset(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert run_environment()["thread_variables"] == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": None,
        "OPENBLAS_NUM_THREADS": "1",
    }


def test_environment_records_library_versions():
    env = run_environment()
    assert (env["torch"], env["numpy"], env["opencv"], env["pillow"]) == (
        torch.__version__,
        np.__version__,
        cv2.__version__,
        PIL.__version__,
    )
    assert env["lmdb_image_cache"] == importlib.metadata.version("lmdb-image-cache")
    assert env["python"] == platform.python_version()


def test_environment_says_none_for_opencv_when_it_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 then raises ImportError
    assert run_environment()["opencv"] is None


def test_environment_is_json_ready():
    env = run_environment()
    assert json.loads(json.dumps(env)) == env


def test_cpu_model_reads_the_model_name_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n"
        "\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n"
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) CPU @ 2.20GHz"


def test_cpu_model_reads_the_hardware_line_of_arm_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\n")
    assert cpu_model(cpuinfo) == "BCM2835"


def test_cpu_model_without_cpuinfo_asks_platform(tmp_path):
    assert cpu_model(tmp_path / "absent") == (platform.processor() or None)


def test_line_shows_threads_versions_and_cpu():
    assert environment_line(ENV) == (
        "torch 2.13.0+cpu (4 threads, OMP_NUM_THREADS=unset, MKL_NUM_THREADS=unset), "
        "numpy 2.4.6, OpenCV 5.1.0, Pillow 13.0.0, lmdb-image-cache 0.1.0, Python 3.11.7 "
        "on AMD EPYC 7B13 (2 CPUs)"
    )


def test_line_shows_openblas_threads_only_when_set():
    env = {**ENV, "thread_variables": {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}}
    assert "(4 threads, OMP_NUM_THREADS=2, MKL_NUM_THREADS=unset, OPENBLAS_NUM_THREADS=1)" in (
        environment_line(env)
    )


def test_line_says_what_is_not_installed_and_what_is_not_recorded():
    env = {key: value for key, value in ENV.items() if key != "pillow"}
    line = environment_line({**env, "opencv": None})
    assert "OpenCV not installed" in line and "Pillow ?" in line


@pytest.mark.parametrize("keep", ["cpu", "machine"], ids=["cpu", "machine"])
def test_line_names_the_machine_when_the_cpu_model_is_unknown(keep):
    env = {**ENV, "cpu": None if keep == "machine" else ENV["cpu"]}
    assert environment_line(env).endswith(f"on {env['cpu'] or 'x86_64'} (2 CPUs)")


def test_line_of_the_running_process_names_its_threads(one_thread):
    assert environment_line(run_environment()).startswith(f"torch {torch.__version__} (1 thread,")
