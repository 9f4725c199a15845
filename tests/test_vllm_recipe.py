"""The vLLM fleet recipe (integrations/vllm/) holds together, checked offline without docker, vLLM or a GPU.

compose.yaml and nginx.conf name the same replicas with the flags the README promises; replicas.sh is
valid bash and, run against a stand-in ``vllm`` that only answers /health, starts one replica per GPU,
prints the ``--server`` flags and stops every process it started on Ctrl-C; the README's
``aligner-chains`` lines parse with the real CLI parser (the helper of test_docs_code.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_docs_code import Block, _commands, code_blocks
from test_docs_code import test_cli_line_parses as cli_line_parses

RECIPE = Path(__file__).resolve().parents[1] / "integrations" / "vllm"
SCRIPT = RECIPE / "replicas.sh"


def compose() -> dict[str, Any]:
    return yaml.safe_load((RECIPE / "compose.yaml").read_text(encoding="utf-8"))


def replicas() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if name.startswith("replica-")}


def flag(command: list[str], name: str) -> str | None:
    """The value of ``--name=value`` in a compose command list."""
    values = [word.split("=", 1)[1] for word in command if word.startswith(f"--{name}=")]
    return values[-1] if values else None


def upstream_servers() -> list[tuple[str, int]]:
    """The ``host:port`` of every ``server`` line in nginx.conf's upstream block."""
    conf = (RECIPE / "nginx.conf").read_text(encoding="utf-8")
    block = re.search(r"upstream\s+\w+\s*\{(?P<body>.*?)\}", conf, re.S)
    assert block, "nginx.conf has no upstream block"
    assert re.search(r"^\s*least_conn;", block["body"], re.M), "the upstream should balance by least connections"
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block["body"], re.M)
    return [(host, int(port)) for host, port in servers]


def test_replicas_serve_the_aligner_one_gpu_each() -> None:
    fleet = replicas()
    assert len(fleet) >= 2
    gpus = []
    for name, svc in fleet.items():
        assert svc["image"].endswith(("vllm/vllm-openai:latest}", "vllm/vllm-openai:latest")), name
        assert svc["entrypoint"] == ["vllm", "serve"], name
        command = svc["command"]
        assert "aligner/aligner-7b-v1.0" in command[0], name  # the model, positional
        assert flag(command, "dtype") == "bfloat16" and flag(command, "max-model-len") == "4096", name
        assert flag(command, "host") == "0.0.0.0" and flag(command, "port"), name
        assert svc["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?"), name  # required, from the env
        assert "/health" in " ".join(svc["healthcheck"]["test"]), name
        assert "ports" not in svc, f"{name} publishes a port: only the balancer should"
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        gpus += device["device_ids"]
    assert sorted(gpus, key=int) == [str(i) for i in range(len(fleet))], "one GPU per replica: 0, 1, ..."


def test_the_balancer_fronts_exactly_the_replicas() -> None:
    services = compose()["services"]
    balancer = services["balancer"]
    assert balancer["image"].startswith("nginx:")
    assert any(volume.startswith("./nginx.conf:/etc/nginx/nginx.conf") for volume in balancer["volumes"])
    assert [name for name, svc in services.items() if "ports" in svc] == ["balancer"]
    fleet = replicas()
    assert balancer["depends_on"] == {name: {"condition": "service_healthy"} for name in fleet}
    servers = upstream_servers()
    assert sorted(host for host, _ in servers) == sorted(fleet), "nginx.conf's upstream and compose.yaml differ"
    for host, port in servers:
        assert port == int(flag(fleet[host]["command"], "port") or 0), f"{host}: nginx and vLLM ports differ"
    conf = (RECIPE / "nginx.conf").read_text(encoding="utf-8")
    (published,) = balancer["ports"]
    assert re.search(rf"^\s*listen\s+{published.rsplit(':', 1)[1]};", conf, re.M), "balancer port differs"
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "location /v1/"):
        assert directive in conf, directive
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout and int(read_timeout[1]) >= 300, "long corrections and quiet streams need a long timeout"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = (RECIPE / "nginx.conf").read_text(encoding="utf-8")
    for host, port in upstream_servers():  # the replicas' names resolve only on the compose network
        conf = conf.replace(f"{host}:{port}", f"127.0.0.1:{port}")
    conf = f"pid {tmp_path}/nginx.pid;\n" + conf
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    cmd = ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert os.access(SCRIPT, os.X_OK)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout


# A stand-in for `vllm serve`: records how it was started, forks a worker (as vLLM does), answers /health.
FAKE_VLLM = """\
import http.server, json, os, subprocess, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
if os.environ.get("FAKE_VLLM_FAIL"):
    sys.exit(3)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
record = {"argv": args, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "key": os.environ.get("VLLM_API_KEY"),
          "pids": [os.getpid(), worker.pid]}
with open(os.path.join(os.environ["FAKE_VLLM_DIR"], f"{port}.json"), "w") as f:
    json.dump(record, f)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", base))
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two free ports in a row")


@pytest.fixture
def fake_gpu_machine(tmp_path: Path) -> dict[str, str]:
    """PATH with a stand-in `vllm` and an `nvidia-smi` listing two GPUs; the environment replicas.sh needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fake_vllm.py").write_text(FAKE_VLLM, encoding="utf-8")
    (bin_dir / "vllm").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{bin_dir}/fake_vllm.py" "$@"\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake'\necho 'GPU 1: Fake'\n")
    for tool in ("vllm", "nvidia-smi"):
        (bin_dir / tool).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VLLM_API_KEY": "test-key",
        "BASE_PORT": str(_free_port_pair()),
        "LOG_DIR": str(tmp_path / "logs"),
        "STARTUP_TIMEOUT": "60",
        "FAKE_VLLM_DIR": str(tmp_path),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in the script's output: {lines}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="replicas.sh polls /health with curl")
def test_script_starts_one_replica_per_gpu_and_stops_them_on_ctrl_c(
    fake_gpu_machine: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = fake_gpu_machine
    base = int(env["BASE_PORT"])
    log = (tmp_path / "script.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--", "--enable-prefix-caching"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        printed = _read_until(proc, "aligner-chains correct", timeout=90)[-1]
        started = [json.loads((tmp_path / f"{base + i}.json").read_text()) for i in range(2)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, (tmp_path / "script.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    for i, record in enumerate(started):
        assert record["gpus"] == str(i) and record["key"] == "test-key"
        argv = record["argv"]
        assert argv[:2] == ["serve", "aligner/aligner-7b-v1.0"] and argv[-1] == "--enable-prefix-caching"
        assert " ".join(argv[2:]).count("--dtype bfloat16 --max-model-len 4096") == 1
        assert argv[argv.index("--port") + 1] == str(base + i)
    words = shlex.split(printed)
    servers = [words[i + 1] for i, word in enumerate(words) if word == "--server"]
    assert servers == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    argv = words[words.index("aligner-chains") + 1 :]
    cli_line_parses(Block(SCRIPT, 1, "bash", printed, None), argv, capsys)  # the printed command parses as is
    deadline = time.monotonic() + 10
    pids = [pid for record in started for pid in record["pids"]]
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "replicas (or their workers) outlived Ctrl-C"


@pytest.mark.skipif(shutil.which("curl") is None, reason="replicas.sh polls /health with curl")
def test_script_fails_when_a_replica_dies_at_startup(fake_gpu_machine: dict[str, str]) -> None:
    env = {**fake_gpu_machine, "FAKE_VLLM_FAIL": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), "1"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "replica 0" in result.stderr and "exited before it was ready" in result.stderr


README_LINES = [
    (block, argv) for block in code_blocks(RECIPE / "README.md") if block.lang == "bash" for argv in _commands(block)
]


def test_readme_shows_both_ways_to_use_the_fleet() -> None:
    commands = [argv for _, argv in README_LINES]
    assert any(argv[0] == "correct" and argv.count("--server") == 1 for argv in commands), "through the balancer"
    assert any(argv[0] == "correct" and argv.count("--server") > 1 for argv in commands), "client-side spreading"
    assert any(argv[0] == "eval" and "--server" in argv and "--judge" in argv for argv in commands)


@pytest.mark.parametrize(("block", "argv"), README_LINES, ids=[f"{b.id}:{' '.join(a[:2])}" for b, a in README_LINES])
def test_readme_cli_line_parses(block: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    cli_line_parses(block, argv, capsys)
