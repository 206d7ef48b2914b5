"""deploy/ against the code: every command and flag exists, ports and drain periods match the server's
defaults, configs load, every COPY'd or mounted file exists or is made by gen-certs.sh, the systemd
unit verifies, and the edge job and the health check run for real.

These checks are static and fast (plus `kubectl kustomize` and `systemd-analyze verify` where those
tools exist); tests/test_deploy_schemas.py validates the manifests and the Compose file against their
schemas, and deploy/verify.sh (`make deploy-verify`, not part of `make test`) builds and runs the
images for real with podman.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.servers import make_teacher, running_server

from lnpt.cloud.certs import generate_test_pki
from lnpt.cloud.process import free_port
from lnpt.shared.cli import build_parser
from lnpt.shared.config import ServerConfig, load_config
from lnpt.shared.data import write_image_folder

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DEFAULTS = ServerConfig()
GENERATED = {"certs", "secrets", "models", "data"}  # made by the README's commands, git-ignored


# --- helpers -------------------------------------------------------------------------------------

def parses(argv: list[str]) -> None:
    """The `lnpt` parser accepts argv (argparse exits on an unknown command or flag), and every flag
    is spelled out in full (argparse would also take an abbreviation such as --thread)."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`lnpt {shlex.join(argv)}` is not a valid command line") from exc
    for word in argv:  # walk down to the (sub)command's own parser
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands or word not in subcommands[0].choices:
            break
        parser = subcommands[0].choices[word]
    known = {option for action in parser._actions for option in action.option_strings}
    for word in argv:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"`lnpt {shlex.join(argv)}`: {word} is not a flag of its command"


def dockerfile(name: str) -> list[list[tuple[str, str]]]:
    """Stages of deploy/docker/NAME as lists of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "docker" / name).read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def instructions(stage, name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> dict[str, dict]:
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_yaml(path):
            objects.setdefault(doc["kind"], doc)
    return objects


def readme() -> str:
    return (DEPLOY / "README.md").read_text()


def healthcheck_module():
    spec = importlib.util.spec_from_file_location("lnpt_healthcheck", DEPLOY / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """deploy/gen-certs.sh output: the files compose and the Secrets mount."""
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(DEPLOY / "gen-certs.sh"), str(out), "DNS:cloud"], check=True, capture_output=True)
    return out


# --- YAML and commands ---------------------------------------------------------------------------

def test_every_yaml_file_parses():
    files = [DEPLOY / "compose.yaml", DEPLOY / "prometheus.yml", *sorted((DEPLOY / "k8s").glob("*.yaml"))]
    for path in files:
        assert load_yaml(path), path
    kinds = set(k8s_objects())
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Namespace", "Kustomization"} <= kinds


def test_every_lnpt_command_line_in_deploy_exists():
    cloud_stages = dockerfile("cloud.Dockerfile")
    entrypoint = json.loads(instructions(cloud_stages[-1], "ENTRYPOINT")[0])
    cmd = json.loads(instructions(cloud_stages[-1], "CMD")[0])
    assert entrypoint == ["lnpt", "serve"]
    parses(["serve", *cmd])
    compose = load_yaml(DEPLOY / "compose.yaml")[0]
    parses(["serve", *compose["services"]["cloud"]["command"]])
    container = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    parses(["serve", *container["args"]])
    # lnpt-edge-job's own flags of `lnpt edge run`, and the extra ones handed to it by compose, the
    # systemd EnvironmentFile (examples too) and the Kubernetes edge pod.
    script = (DEPLOY / "bin" / "lnpt-edge-job").read_text()
    assert re.search(r'^exec "\$\{LNPT_BIN:-lnpt\}" edge run ', script, re.M)
    own = re.findall(r"args\+?=\((--[a-z-]+) ", script)
    assert own == ["--work", "--config", "--data", "--teacher"], own
    parses(["edge", "run", *[word for flag in own for word in (flag, "x")]])
    env_files = [compose["services"][name]["environment"] for name in ("edge-a", "edge-b")]
    env_files.append({e["name"]: e["value"] for e in edge_pod()[1]["spec"]["containers"][0]["env"]})
    example = {}
    for line in (DEPLOY / "systemd" / "lnpt-edge.env").read_text().splitlines():
        key, sep, value = line.lstrip("#").partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            example[key] = shlex.split(value)[0] if value else ""
    env_files.append(example)
    for env in env_files:
        assert not {"LNPT_PRUNE_ARGS", "LNPT_TRAIN_ARGS", "LNPT_EXPORT_ARGS"} & set(env)  # the old script's
        assert env.get("LNPT_JOB_ARGS"), env
        parses(["edge", "run", *shlex.split(env["LNPT_JOB_ARGS"])])
    # The copy-paste commands of the README.
    lines = [line.strip() for line in readme().splitlines() if line.strip().startswith("lnpt ")]
    assert len(lines) >= 3, lines
    for line in lines:
        parses(shlex.split(line.split("#")[0])[1:])


# --- server defaults: ports, probes, drain ------------------------------------------------------

def test_ports_match_the_servers_defaults():
    objects = k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == {"grpc": DEFAULTS.port, "metrics": DEFAULTS.metrics_port}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in objects["Service"]["spec"]["ports"]}
    assert service_ports["grpc"] == (DEFAULTS.port, "grpc")
    assert service_ports["metrics"] == (DEFAULTS.metrics_port, "metrics")
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULTS.metrics_port)
    for section in (load_config(DEPLOY / "config" / "cloud.toml").server, configmap_config().server):
        assert (section.port, section.metrics_port, section.host) == (DEFAULTS.port, DEFAULTS.metrics_port, "0.0.0.0")
    final = dockerfile("cloud.Dockerfile")[-1]
    assert set(" ".join(instructions(final, "EXPOSE")).split()) == {str(DEFAULTS.port), str(DEFAULTS.metrics_port)}
    compose = load_yaml(DEPLOY / "compose.yaml")[0]
    assert f"{DEFAULTS.port}:{DEFAULTS.port}" in compose["services"]["cloud"]["ports"]
    targets = load_yaml(DEPLOY / "prometheus.yml")[0]["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"cloud:{DEFAULTS.metrics_port}"] and "cloud" in compose["services"]


def test_probes_use_grpc_health_on_the_server_port():
    container = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    check = healthcheck_module()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["python", "/opt/lnpt/healthcheck.py"], probe
        args = check.parse_args(command[2:])
        assert args.address == f"localhost:{DEFAULTS.port}" and not args.insecure
        assert args.live == (probe == "livenessProbe")  # readiness and startup need SERVING
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LNPT_HEALTH_CA"] == "/etc/lnpt/tls/ca.pem"
    # Teacher loading (NOT_SERVING) must fit in the startup probe's window.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_termination_outlasts_prestop_plus_the_servers_drain():
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = configmap_config().server.grace_seconds
    assert grace > 0 and pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace
    compose = load_yaml(DEPLOY / "compose.yaml")[0]
    stop = compose["services"]["cloud"]["stop_grace_period"]
    assert float(stop.rstrip("s")) > load_config(DEPLOY / "config" / "cloud.toml").server.grace_seconds
    assert "STOPSIGNAL SIGTERM" in (DEPLOY / "docker" / "cloud.Dockerfile").read_text()


# --- Kubernetes ------------------------------------------------------------------------------------

def configmap_config():
    configmap = k8s_objects()["ConfigMap"]
    text = configmap["data"]["lnpt.toml"]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lnpt-configmap-{os.getpid()}.toml"
    path.write_text(text)
    try:
        return load_config(path)
    finally:
        path.unlink()


def test_configmap_is_a_valid_config_whose_files_come_from_the_secrets(pki):
    config = configmap_config()
    assert not config.server.insecure and config.server.cert and config.server.tokens_file
    objects = k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    folder, name = pod["containers"][0]["args"][pod["containers"][0]["args"].index("--config") + 1].rsplit("/", 1)
    assert mounts["config"]["mountPath"] == folder and name in objects["ConfigMap"]["data"]
    assert not [m for m in mounts.values() if "subPath" in m]  # podman kube play has no subPath
    secrets = {doc["metadata"]["name"]: doc for doc in load_yaml(DEPLOY / "k8s" / "secret.example.yaml")}
    for path in (config.server.cert, config.server.key, config.server.tokens_file, "/etc/lnpt/tls/ca.pem"):
        folder, name = path.rsplit("/", 1)
        volume = next(v for k, v in volumes.items() if mounts[k]["mountPath"] == folder)
        secret = secrets[volume["secret"]["secretName"]]
        assert name in secret["stringData"], (path, secret["metadata"]["name"])
        if folder.endswith("/tls"):
            assert (pki / name).is_file()  # gen-certs.sh makes a file of that name
    assert "BEGIN" in secrets["lnpt-guidance-tls"]["stringData"]["server.pem"]  # a template, no real key
    assert "MII" not in (DEPLOY / "k8s" / "secret.example.yaml").read_text()


def test_headless_service_hpa_pdb_and_resources_fit_the_deployment():
    objects = k8s_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None"  # one DNS record per pod: gRPC round_robin balances
    assert service["spec"]["selector"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items() and pdb["minAvailable"] < hpa["minReplicas"]
    pod = deployment["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    # What clients dial: the headless Service's name in the kustomization's namespace.
    namespace = objects["Kustomization"]["namespace"]
    target = f"dns:///{service['metadata']['name']}.{namespace}.svc.cluster.local:{DEFAULTS.port}"
    assert target in readme() and target in (DEPLOY / "k8s" / "service.yaml").read_text()
    resources_listed = set(objects["Kustomization"]["resources"])
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert resources_listed == on_disk


def edge_pod() -> tuple[dict, dict]:
    """deploy/k8s/edge/pod.yaml: (its ConfigMap, its Pod)."""
    docs = {doc["kind"]: doc for doc in load_yaml(DEPLOY / "k8s" / "edge" / "pod.yaml")}
    return docs["ConfigMap"], docs["Pod"]


def test_edge_pod_runs_the_edge_job_with_the_edge_config_against_the_headless_service(pki):
    configmap, pod = edge_pod()
    assert configmap["data"]["edge.toml"] == (DEPLOY / "config" / "edge.toml").read_text()
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "lnpt-edge" and "command" not in container  # the image's lnpt-edge-job
    assert spec["restartPolicy"] == "OnFailure" and spec["securityContext"]["runAsUser"] != 0
    env = {e["name"]: e["value"] for e in container["env"]}
    target = f"dns:///{k8s_objects()['Service']['metadata']['name']}.lnpt.svc.cluster.local:{DEFAULTS.port}"
    assert env["LNPT_TEACHER"] == target and pod["metadata"]["namespace"] == "lnpt"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert not [m for m in mounts.values() if "subPath" in m]  # podman kube play has no subPath
    volumes = {v["name"]: v for v in spec["volumes"]}
    folder, name = env["LNPT_CONFIG"].rsplit("/", 1)
    assert volumes[mounts[folder]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert name in configmap["data"]
    # The CA from the config, the token from --token-file: each file comes from a Secret.
    config = load_config(DEPLOY / "config" / "edge.toml")
    job_args = shlex.split(env["LNPT_JOB_ARGS"])
    token_file = job_args[job_args.index("--token-file") + 1]
    secrets = {doc["metadata"]["name"]: doc for doc in load_yaml(DEPLOY / "k8s" / "secret.example.yaml")}
    for path in (config.client.ca_cert, token_file):
        folder, name = path.rsplit("/", 1)
        secret = volumes[mounts[folder]["name"]]["secret"]
        assert name in secrets[secret["secretName"]]["stringData"], path
        assert [item["path"] for item in secret.get("items", [])] in ([], [name])
    assert (pki / "ca.pem").is_file()
    assert volumes[mounts[env["LNPT_DATA"]]["name"]]["hostPath"]["path"] == "/srv/lnpt/images"
    assert "emptyDir" in volumes[mounts[env["LNPT_WORK"]]["name"]]
    # deploy/verify.sh replaces exactly these strings for `podman kube play`.
    verify = (DEPLOY / "verify.sh").read_text()
    assert "/srv/lnpt/images" in verify and "lnpt-edge\\$" in verify and "lnpt-guidance\\$" in verify


def test_kustomize_renders_the_manifests():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed; the manifests were checked above without it")
    done = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = list(yaml.safe_load_all(done.stdout))
    assert all(doc["metadata"].get("namespace") == "lnpt" for doc in rendered if doc["kind"] != "Namespace")
    image = next(d for d in rendered if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.org/lnpt-guidance:v1"


# --- images ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cloud.Dockerfile", "edge.Dockerfile"])
def test_images_are_multi_stage_pinned_non_root_and_copy_files_that_exist(name):
    stages = dockerfile(name)
    header, *built = stages
    assert len(built) >= 2, "multi-stage: a build stage and a slim final stage"
    default_base = dict(a.split("=", 1) for a in instructions(header, "ARG"))["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", default_base), default_base
    assert all(instructions(s, "FROM")[0].startswith("${PYTHON_IMAGE}") for s in built)
    final = built[-1]
    user = instructions(final, "USER")[-1].split(":")[0]
    assert user not in ("root", "0"), user
    final_runs = " ".join(instructions(final, "RUN"))
    assert not re.search(r"pip install|apt-get install|gcc|build-essential", final_runs)
    installs = [r for s in built[:-1] for r in instructions(s, "RUN") if "pip install" in r]
    assert installs and all("-c requirements.lock" in r for r in installs)
    # Every COPY from the context exists and is let through by the Dockerfile's own .dockerignore.
    allowed = {line[1:].rstrip("/") for line in (DEPLOY / "docker" / f"{name}.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for stage in built:
        for args in instructions(stage, "COPY"):
            if args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
                assert source.rstrip("/") in allowed, f"{name}: {source} is not in its .dockerignore allow-list"


def test_cloud_image_health_checks_the_server_and_edge_image_has_no_cloud_extras():
    final = dockerfile("cloud.Dockerfile")[-1]
    healthcheck = instructions(final, "HEALTHCHECK")[0]
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command == ["python", "/opt/lnpt/healthcheck.py"]
    assert "deploy/docker/healthcheck.py /opt/lnpt/healthcheck.py" in instructions(final, "COPY")
    env = " ".join(instructions(final, "ENV"))
    assert f"LNPT_HEALTH_ADDRESS=localhost:{DEFAULTS.port}" in env
    cloud_installs = " ".join(instructions(dockerfile("cloud.Dockerfile")[1], "RUN"))
    assert '".[cloud]"' in cloud_installs and "VARIANT" in cloud_installs
    edge_build, edge_final = dockerfile("edge.Dockerfile")[1:]
    edge_installs = " ".join(instructions(edge_build, "RUN"))
    assert '".[edge]"' in edge_installs and "cloud" not in edge_installs
    assert json.loads(instructions(edge_final, "ENTRYPOINT")[0]) == ["lnpt-edge-job"]
    assert "deploy/bin/lnpt-edge-job /opt/lnpt/bin/lnpt-edge-job" in instructions(edge_final, "COPY")
    assert os.access(DEPLOY / "bin" / "lnpt-edge-job", os.X_OK)
    # The config baked into the cloud image, and the teacher image's file, are where CMD looks.
    assert "deploy/config/cloud.toml /etc/lnpt/lnpt.toml" in instructions(final, "COPY")
    cmd = json.loads(instructions(final, "CMD")[0])
    assert cmd[cmd.index("--config") + 1] == "/etc/lnpt/lnpt.toml"
    teacher_copy = instructions(dockerfile("teacher.Dockerfile")[-1], "COPY")[0].split()
    assert teacher_copy[-1] == cmd[cmd.index("--checkpoint") + 1] and teacher_copy[0] == "--chown=10001:10001"
    # Pip settings for a wheel mirror reach the build stages only, never the final images.
    for name in ("cloud.Dockerfile", "edge.Dockerfile"):
        *builds, final = dockerfile(name)[1:]
        assert {"PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"} <= set(instructions(builds[0], "ARG"))
        assert not [a for a in instructions(final, "ARG") + instructions(final, "ENV") if "PIP_" in a]
    assert "deploy/verify.sh" in readme() and "make deploy-verify" in readme()


# --- compose ---------------------------------------------------------------------------------------

def test_compose_mounts_exist_or_are_generated_by_the_documented_commands(pki):
    compose = load_yaml(DEPLOY / "compose.yaml")[0]
    ignored = {line.strip().rstrip("/") for line in (DEPLOY / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert ignored == GENERATED
    services = compose["services"]
    assert {"cloud", "edge-a", "edge-b", "prometheus"} <= set(services)
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("./"):
                assert source in named_volumes, (name, source)
                continue
            relative = source[2:]
            top = relative.split("/")[0]
            if (DEPLOY / relative).exists():
                assert top not in GENERATED
            elif top == "certs":
                rest = relative[len("certs"):].lstrip("/")
                assert not rest or (pki / rest).is_file(), f"gen-certs.sh makes no {rest}"
            else:
                assert top in GENERATED and f"deploy/{relative}" in readme(), f"{name}: nothing makes {source}"
    for edge in ("edge-a", "edge-b"):  # each client its own data and work
        assert services[edge]["environment"]["LNPT_TEACHER"] == f"cloud:{DEFAULTS.port}"
    data = {next(v for v in services[e]["volumes"] if v.endswith(":/data:ro")) for e in ("edge-a", "edge-b")}
    work = {next(v for v in services[e]["volumes"] if ":/work" in v) for e in ("edge-a", "edge-b")}
    assert len(data) == len(work) == 2
    assert "DNS:cloud" in readme()  # the server certificate names the host the clients dial
    edge_config = load_config(DEPLOY / "config" / "edge.toml")
    mounted = {v.split(":")[1] for v in services["edge-a"]["volumes"]}
    assert {edge_config.client.ca_cert, edge_config.client.token_file} <= mounted


# --- systemd ---------------------------------------------------------------------------------------

def unit() -> dict[str, str]:
    entries = {}
    for line in (DEPLOY / "systemd" / "lnpt-edge.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            entries.setdefault(key.strip(), value.strip())
    return entries


def test_systemd_unit_is_hardened_restarts_and_matches_the_install_steps():
    entries = unit()
    assert entries["User"] == "lnpt" and entries["Restart"] == "on-failure"
    assert entries["NoNewPrivileges"] == "yes" and entries["ProtectSystem"] == "strict"
    assert entries["StateDirectory"] == "lnpt"
    text = readme()
    assert f"install -m 0755 deploy/bin/lnpt-edge-job {entries['ExecStart']}" in text
    assert f"deploy/systemd/lnpt-edge.env {entries['EnvironmentFile']}" in text
    env = (DEPLOY / "systemd" / "lnpt-edge.env").read_text()
    work = re.search(r"^LNPT_WORK=(\S+)", env, re.M).group(1)
    assert work.startswith("/var/lib/lnpt/")  # inside StateDirectory: writable under ProtectSystem=strict
    config = re.search(r"^LNPT_CONFIG=(\S+)", env, re.M).group(1)
    assert f"deploy/config/edge.toml {config}" in text


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd provides it)")
    # verify checks that ExecStart exists: point it at the script in this checkout.
    text = (DEPLOY / "systemd" / "lnpt-edge.service").read_text()
    copy = tmp_path / "lnpt-edge.service"
    copy.write_text(text.replace(unit()["ExecStart"], str(DEPLOY / "bin" / "lnpt-edge-job")))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys and bad values are only warnings


# --- the edge job and the health check, for real ---------------------------------------------------

def test_edge_job_script_runs_lnpt_edge_run_from_its_environment_and_is_safe_to_restart(fashion_train, tmp_path):
    teacher = make_teacher(tmp_path / "T.pt")
    data = write_image_folder(fashion_train[0][:256], tmp_path / "images")
    work = tmp_path / "work"
    config = tmp_path / "edge.toml"
    config.write_text("[prune]\nsparsity = 0.5\nsamples = 64\n\n[train]\nepochs = 1\nbatch_size = 32\n"
                      "threads = 1\n\n[export]\nformat = \"sparse\"\nverify_samples = 16\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", LNPT_CONFIG=str(config), LNPT_WORK=str(work), LNPT_DATA=str(data),
               LNPT_TEACHER=str(teacher))

    def start(job_args: str) -> dict:
        done = subprocess.run([str(DEPLOY / "bin" / "lnpt-edge-job")], env={**env, "LNPT_JOB_ARGS": job_args},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    first = start("--no-export --format json")  # prune, train; the flags from the environment arrived
    assert first["stages"] == {"prune": "done", "train": "done", "export": "skipped"}
    assert first["work"] == str(work) and first["train"]["steps"] == 8  # 256 images / 32 per step
    pruned = (work / "student.pt").stat().st_mtime_ns
    assert not (work / "student.onnx").exists()

    second = start("--format json")  # a restart keeps what is done and exports
    assert second["stages"] == {"prune": "kept", "train": "kept", "export": "done"}
    assert (work / "student.pt").stat().st_mtime_ns == pruned
    assert (work / "student.onnx").is_file() and (work / "student.onnx.json").is_file()

    third = start("--format json")  # a finished job only verifies its files
    assert third["stages"] == {"prune": "kept", "train": "kept", "export": "kept"}
    # The host-side check deploy/verify.sh runs on the containers' exports passes on this one.
    done = subprocess.run([sys.executable, str(DEPLOY / "verify_onnx.py"), str(work), "--samples", "64"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.startswith("ok: onnx.checker passed"), done.stdout + done.stderr


def test_healthcheck_speaks_tls_needs_no_token_and_tells_serving_from_not_serving(tmp_path, capsys):
    from grpc_health.v1 import health_pb2

    check = healthcheck_module()
    pki = generate_test_pki(tmp_path / "pki")
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token-0123456789\n")
    with running_server(make_teacher(tmp_path / "T.pt"), tls=pki,
                        overrides=[f"server.tokens_file={json.dumps(str(tokens))}"]) as srv:
        tls = ["--address", srv.tls_address, "--ca-cert", str(pki.ca_cert)]
        assert check.main(tls) == 0
        assert check.main(["--address", srv.tls_address, "--insecure", "--timeout", "2"]) == 2
        srv.call(srv.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
        assert check.main(tls) == 1  # loading or draining: not ready ...
        assert check.main([*tls, "--live"]) == 0  # ... but alive
    assert check.main(["--address", f"localhost:{free_port()}", "--ca-cert", str(pki.ca_cert), "--timeout", "2"]) == 2
    assert "NOT_SERVING" in capsys.readouterr().out
