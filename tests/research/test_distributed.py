"""Data parallel training over several processes (jax.distributed, gloo on loopback CPUs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import research
from research import configs, train
from research.nets import models
from research.serving import model_dir
from research.serving.classifier import Classifier, build_model
from research.train import distributed

REPO = Path(research.__file__).resolve().parent.parent
TIMEOUT = 300  # seconds a group of processes may take (generous: CI machines are slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(config) -> list[str]:
    """Every field of `config` as a research.train flag, so the CLI builds the same config."""
    flags = []
    for name, value in config.to_dict().items():
        if isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value)
        flags.append(f"--{name}={'none' if value is None else value}")
    return flags


def _launch(config, workdir: Path, processes: int = 2) -> list[subprocess.Popen]:
    """`processes` copies of `python -m research.train`, one CPU device each, on loopback."""
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), JAX_COORDINATOR_ADDRESS=address)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "research.train", f"--workdir={workdir}", *_flags(config)]
            + [f"--num_processes={processes}", f"--process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; fails naming any that did not exit 0, with its output."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{out[-3000:]}"
    return outputs


def _weights(workdir: Path, step: int) -> Any:
    """The weights at `step`, restored onto this process's first device (as Classifier.load
    does: a checkpoint written by several processes records their devices)."""
    directory = model_dir.find_checkpoints(workdir)
    record = model_dir.read_record(directory, step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        models.inference_state(build_model(record, abstract=True)),
    )
    return ocp.StandardCheckpointer().restore(directory / str(step) / "model", target)


def _assert_same_weights(dir_a: Path, dir_b: Path, step: int) -> None:
    """Equal to float tolerance: summing a batch in two halves rounds differently, and 30
    steps grow that to ~1e-4 (the same drift as one process over two local devices)."""
    for x, y in zip(
        jax.tree.leaves(_weights(dir_a, step)), jax.tree.leaves(_weights(dir_b, step)), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-2, atol=2e-3)


def _metrics(workdir: Path, step: int) -> dict:
    return model_dir.read_record(model_dir.find_checkpoints(workdir), step).metrics


def _assert_same_metrics(a: dict, b: dict, names: tuple[str, ...]) -> None:
    for name in names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def reference(color_dataset, tmp_path_factory):
    """One process, one device: the tiny net for 30 steps of a 60-step schedule, evaluated each
    epoch (3 steps) and calibrated on the validation split. -> (config, workdir, result)

    In float32: bfloat16 products round each process's half-batch differently, and 30 steps
    grow that past any tolerance that would still catch a wrong reduction."""
    name, data_dir = color_dataset
    config = configs.get_config(
        "tiny", dataset=name, data_dir=data_dir, epochs=20.0, max_steps=30,
        keep_checkpoints=20,  # every step's metrics stay to compare
        compute_dtype="float32",
    )  # fmt: skip
    workdir = tmp_path_factory.mktemp("one_process")
    return config, workdir, train.train_and_evaluate(config, workdir)


def test_two_processes_killed_and_restarted_match_one_process(reference, tmp_path):
    """Two processes, each reading half of every global batch, are SIGKILLed after their first
    checkpoint and started again: they resume from the last checkpoint and end with the
    one-process run's weights, metrics and calibration (float tolerance); only process 0
    reports and writes results."""
    config, one_dir, one = reference
    procs = _launch(config, tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "checkpoints" / "3").is_dir():  # the first eval's checkpoint
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        procs[0].send_signal(signal.SIGKILL)  # what a job manager does when one task dies
    finally:
        for proc in procs:
            proc.communicate(timeout=TIMEOUT)
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert 3 <= max(saved) < 30, f"not killed mid-run: checkpoints {sorted(saved)}"
    _assert_same_metrics(_metrics(one_dir, 3), _metrics(tmp_path, 3), ("train_loss", "eval_loss"))

    outputs = _wait(_launch(config, tmp_path))
    assert f"at step {max(saved)}." in outputs[0]  # "Resumed from ... at step N."
    _assert_same_weights(one_dir, tmp_path, 30)
    names = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "eval_count")
    _assert_same_metrics(_metrics(one_dir, 30), _metrics(tmp_path, 30), names)
    for step in range(3, 31, 3):  # every evaluation, before the kill and after
        _assert_same_metrics(_metrics(one_dir, step), _metrics(tmp_path, step), ("eval_loss",))
    calibrated = one["calibration"]["step"]
    two = model_dir.read_record(model_dir.find_checkpoints(tmp_path), calibrated)
    assert two.temperature == pytest.approx(one["calibration"]["temperature"], rel=1e-3)
    assert "done: validation accuracy" in outputs[0] and (tmp_path / "results.json").is_file()
    assert "done:" not in outputs[1] and "step     30" not in outputs[1]  # process 1 is quiet
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
    served = Classifier.load(tmp_path).predict(list(images))  # one process serves it
    np.testing.assert_allclose(served, Classifier.load(one_dir).predict(list(images)), atol=1e-2)


def test_process_flags_default_to_the_environment_and_are_checked():
    """Flags win over JAX_* variables; a missing address or an out-of-range id is refused."""
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    group = distributed.ProcessGroup.from_flags(process_id=2, environ=env)
    assert group == distributed.ProcessGroup("h:1", 4, 2) and group.is_distributed
    assert not distributed.ProcessGroup.from_flags(environ={}).is_distributed
    with pytest.raises(ValueError, match="coordinator_address"):
        distributed.ProcessGroup.from_flags(num_processes=2, process_id=0, environ={})
    with pytest.raises(ValueError, match=r"0\.\.1, got 2"):
        distributed.ProcessGroup.from_flags("h:1", 2, 2, environ={})


def test_one_process_owns_every_row_of_the_batch():
    """With one process the mesh spans the local devices and the process reads whole batches."""
    mesh = distributed.global_mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    assert mesh.size == jax.device_count()
    assert distributed.process_rows(sharding, 16) == (0, 16)
    assert distributed.is_main_process()
