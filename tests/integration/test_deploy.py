"""The Kubernetes manifests of deploy/kubernetes (docs/deploy.md): every overlay renders with
kubectl's built-in kustomize; every ``confide`` command line in them is one the real CLI parser
accepts; paths lie on mounted volumes; no secret value is written in them; the security settings
are there; and the command lines really run: ``cas serve`` started exactly as a manifest says
(its volumes and environment mapped to temporary directories, PostgreSQL to the suite's cluster)
answers its probe and Prometheus routes, replicas share a database with the key the init
container installs, and a witness started as its Deployment says cosigns a replica's log."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest
from ruamel.yaml import YAML

from confide.cli import cli
from confide.httpserve.metrics_listener import METRICS_PATH
from pki import tls_server_files

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet", "Job")
T = TypeVar("T")
WITNESS_LABEL = "app.kubernetes.io/name"
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _kubectl() -> str:
    """kubectl with a kustomize of v4 or later (components, labels), else the tests skip."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are rendered with `kubectl kustomize`")
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is {version or 'absent'}: the manifests need kustomize v4 or later")
    return kubectl


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERED:
        out = subprocess.run(
            [_kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        _RENDERED[overlay] = [doc for doc in YAML(typ="safe").load_all(out.stdout) if doc]
    return _RENDERED[overlay]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for o in objects:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_confide(container: dict[str, Any]) -> bool:
    return str(container["image"]).split("/")[-1].split(":")[0] == "confide"


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes sets it; values from Secrets, ConfigMaps or the
    downward API stand as a marker naming their source (the tests put their own values there)."""
    values = {}
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = str(item["value"])
        else:
            ((kind, ref),) = item["valueFrom"].items()
            values[item["name"]] = f"<{kind} {ref.get('name', '')}/{ref.get('key', ref.get('fieldPath'))}>"
    return values


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` as the kubelet expands it in args (every variable used must be defined)."""

    def one_var(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not in the container's env"
        return env[match.group(1)]

    return [VAR.sub(one_var, arg) for arg in args]


def parse_confide(args: list[str]) -> tuple[str, dict[str, Any]]:
    """The command line parsed by confide's own click commands (a renamed or removed option, a
    value of the wrong type or a missing required option raises): its command path and params."""
    command: click.Command = cli
    path = ["confide"]
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"{' '.join(path)}: no subcommand"
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{' '.join(path)}: no subcommand {rest[0]!r}"
        command, path = sub, [*path, rest.pop(0)]
    ctx = command.make_context(" ".join(path), rest)
    return " ".join(path[1:]), dict(ctx.params)


def volume_source(spec: dict[str, Any], workload: dict[str, Any], name: str) -> dict[str, Any]:
    for volume in spec.get("volumes", []):
        if volume["name"] == name:
            return dict(volume)
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        if claim["metadata"]["name"] == name:
            return {"name": name, "persistentVolumeClaim": {"template": True}}
    raise AssertionError(f"volume {name} is not defined")


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume mount a path lies on (the longest mount path that contains it)."""
    best = None
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (
            best is None or len(root) > len(best["mountPath"])
        ):
            best = mount
    return best


# --- rendering and static checks -------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {"sqlite", "postgres", "postgres-witness"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    objects = render(overlay)
    cas = one(objects, "StatefulSet", "confide-cas")
    assert cas["spec"]["serviceName"] == "confide-cas-pods"
    assert one(objects, "Service", "confide-cas-pods")["spec"]["clusterIP"] == "None"
    labels = cas["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = one(objects, kind, "confide-cas")["spec"]
        selector = selector.get("selector", selector.get("podSelector"))
        assert selector["matchLabels"].items() <= labels.items(), kind
    for service in (one(objects, "Service", "confide-cas"), one(objects, "Service", "confide-cas-pods")):
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {p["name"] for p in cas["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
        # the metrics port is scraped on the pods, behind the NetworkPolicy: no Service has it
        assert {p["targetPort"] for p in service["spec"]["ports"]} == {"https"}
    for service in (o for o in objects if o["kind"] == "Service"):
        assert all(p["port"] != 9090 and p["targetPort"] != "metrics" for p in service["spec"]["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_confide_command_line_parses(overlay: str) -> None:
    """Every container running the image's entrypoint (``confide``) has args the CLI accepts,
    with every absolute path on a volume the container mounts (a file of a Secret or ConfigMap
    volume one of its items), and ``--listen`` on the port its probes and Services use."""
    parsed = 0
    for workload, spec in pod_specs(render(overlay)):
        for container in containers(spec):
            if not is_confide(container) or "command" in container:
                continue
            args = expand([str(a) for a in container["args"]], env_values(container))
            command, params = parse_confide(args)
            parsed += 1
            for arg in args:
                for path in re.findall(r"(?:^|=)(/[^\s=]+)", arg):
                    mount = mount_of(container, path)
                    assert mount is not None, f"{container['name']}: {path} is on no mounted volume"
                    source = volume_source(spec, workload, mount["name"])
                    items = next(
                        (s.get("items") for k, s in source.items() if k in ("secret", "configMap")), None
                    )
                    if items is not None and path != mount["mountPath"]:
                        relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
                        assert relative in {i["path"] for i in items}, (
                            f"{path}: not an item of {mount['name']}"
                        )
            port = int(params["listen"].rpartition(":")[2])
            assert params["listen"].startswith("0.0.0.0:"), "listen on the pod's addresses"
            # docs/deploy.md "Metrics": /metrics on a listener of its own, port "metrics"
            assert params["metrics_listen"] is not None and params["metrics_listen"].startswith("0.0.0.0:")
            metrics_port = int(params["metrics_listen"].rpartition(":")[2])
            assert metrics_port != port
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"https": port, "metrics": metrics_port}
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scheme"] == "http"
            assert annotations["prometheus.io/port"] == str(metrics_port)
            assert annotations["prometheus.io/path"] == METRICS_PATH
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    get = container[probe]["httpGet"]
                    # the API over TLS, or /metrics on the metrics listener (plain HTTP)
                    assert (get["scheme"], get["port"]) in {("HTTPS", "https"), ("HTTP", "metrics")}
                    assert get["port"] == "https" or get["path"] == METRICS_PATH
            if command == "cas serve":
                assert params["data_dir"] == Path("/var/lib/confide/cas")
                data = mount_of(container, "/var/lib/confide/cas")
                assert data is not None and data["mountPath"] != "/var/lib/confide/cas", (
                    "the CAS must own its directory"
                )
    assert parsed >= 1


def cas_get_routes(data_dir: Path) -> set[str]:
    """The GET routes of the CAS's API (confide.cas.app.create_app over an in-process CAS)."""
    from cas_inproc import InProcessCas
    from confide.cas.app import create_app

    env = InProcessCas.start(data_dir, policy="")
    try:
        app = create_app(env.cas)
        return {route.path for route in app.routes if "GET" in getattr(route, "methods", ())}
    finally:
        env.cas.db.dispose()


def test_cas_probes_are_routes_the_cas_serves(tmp_path: Path) -> None:
    """The probes of every CAS pod are GET routes of the CAS's API: readiness /v1/ready (the
    database answers), liveness /v1/health (the process serves); the Prometheus path is the
    metrics listener's (``cas serve --metrics-listen``), which the API then does not serve."""
    routes = cas_get_routes(tmp_path / "cas")
    for overlay in OVERLAYS:
        cas = one(render(overlay), "StatefulSet", "confide-cas")
        container = cas["spec"]["template"]["spec"]["containers"][0]
        paths = {
            p: container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        assert paths == {
            "startupProbe": "/v1/health",
            "readinessProbe": "/v1/ready",
            "livenessProbe": "/v1/health",
        }
        assert set(paths.values()) <= routes
        assert cas["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == METRICS_PATH
        assert "--metrics-listen" in container["args"]


def docs_command_lines(text: str) -> list[list[str]]:
    """The ``confide`` command lines with options in a page's code blocks and code spans (a code
    span may wrap), each up to a comment or the span's end."""
    pieces = [
        line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL) for line in block.splitlines()
    ]
    pieces += [" ".join(span.split()) for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text)]
    subcommands = "|".join(cli.list_commands(click.Context(cli)))
    found = []
    for piece in pieces:
        for line in re.findall(rf"(?<![\w/-])confide ((?:{subcommands}) [^#]*)", piece):
            words = shlex.split(line)
            if any(w.startswith("--") for w in words):
                found.append(words)
    return found


def test_docs_command_lines_parse() -> None:
    """Every confide command line docs/deploy.md tells an operator to run is one the CLI
    accepts (placeholders such as URL stand where a string goes)."""
    lines = docs_command_lines((ROOT / "docs" / "deploy.md").read_text())
    assert len(lines) >= 4
    for words in lines:
        parse_confide(words)
    assert docs_command_lines("run `confide cas rotate-master-key --onlin\n  --data-dir D`") == [
        ["cas", "rotate-master-key", "--onlin", "--data-dir", "D"]
    ]
    with pytest.raises(click.NoSuchOption):
        parse_confide(["cas", "rotate-master-key", "--onlin", "--data-dir", "D"])


def test_a_renamed_option_is_refused() -> None:
    """The parser the tests use refuses what the CLI refuses (the test above can fail)."""
    with pytest.raises(click.NoSuchOption):
        parse_confide(["cas", "serve", "--data-dir", "/d", "--listen-on", "0.0.0.0:8443"])
    with pytest.raises(click.BadParameter):
        parse_confide(["cas", "serve", "--data-dir", "/d", "--witness-quorum", "zero"])
    with pytest.raises(AssertionError, match="no subcommand"):
        parse_confide(["cas", "server", "--data-dir", "/d"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values(overlay: str) -> None:
    """Secrets are named, never written: no Secret object, no key or certificate material, no
    password in a URL, no literal value for a variable whose name says it is secret."""
    objects = render(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]
    text = json.dumps(objects)
    assert "-----BEGIN" not in text
    assert not re.search(r"[a-z+]+://[^/\s\"@]+:[^/\s\"@]+@", text), "a password in a URL"
    for _workload, spec in pod_specs(objects):
        for container in containers(spec):
            for item in container.get("env", []):
                if re.search(r"PASSW|SECRET|TOKEN|KEY$", item["name"]):
                    assert "valueFrom" in item, f"{item['name']} given as a literal"
            for arg in container.get("args", []):
                assert not re.fullmatch(r"[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=", str(arg)), "a key in args"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image(overlay: str) -> None:
    """Every container, init containers and the witness's included, runs the one image the
    overlay names (kustomize's image transformer reached them all), with a tag."""
    images = {c["image"] for _w, spec in pod_specs(render(overlay)) for c in containers(spec)}
    assert len(images) == 1 and re.fullmatch(r"[^:]+:[\w.-]+", images.pop())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_settings(overlay: str) -> None:
    objects = render(overlay)
    for workload, spec in pod_specs(objects):
        name = workload["metadata"]["name"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in containers(spec):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc.get("privileged", False) is False, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), container[
                "name"
            ]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            # a read-only root: a writable volume for temporary files
            assert mount_of(container, "/tmp") is not None or "command" in container, container["name"]
        for container in spec["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, container["name"]
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c["ports"]}
            # plain HTTP on the metrics listener's port only (no TLS there, docs/deploy.md
            # "Metrics"): not the API's port, which answers /metrics 404
            assert int(annotations["prometheus.io/port"]) == ports["metrics"] != ports["https"]
            assert annotations["prometheus.io/path"] == "/metrics"
            assert annotations["prometheus.io/scheme"] == "http"
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_overlay_shapes() -> None:
    sqlite, postgres = render("sqlite"), render("postgres")
    one_cas = one(sqlite, "StatefulSet", "confide-cas")
    assert one_cas["spec"]["replicas"] == 1
    assert "--db" not in one_cas["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "initContainers" not in one_cas["spec"]["template"]["spec"]
    replicas = one(postgres, "StatefulSet", "confide-cas")
    assert replicas["spec"]["replicas"] > 1
    spec = replicas["spec"]["template"]["spec"]
    assert "--db" in spec["containers"][0]["args"]
    assert env_values(spec["containers"][0])["PGPASSWORD"] == "<secretKeyRef confide-cas-db/password>"
    key_volume = volume_source(spec, replicas, "master-key")
    assert key_volume["secret"]["secretName"] == "confide-cas-master-key"
    assert [c["name"] for c in spec["initContainers"]] == ["master-key"]
    egress = one(postgres, "NetworkPolicy", "confide-cas")["spec"]["egress"]
    assert {"protocol": "TCP", "port": 5432} in [p for rule in egress for p in rule.get("ports", [])]
    pdb = one(postgres, "PodDisruptionBudget", "confide-cas")["spec"]
    assert pdb["maxUnavailable"] == 1
    witness = render("postgres-witness")
    logs = [
        a
        for a in one(witness, "Deployment", "confide-witness")["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
        if str(a).startswith("/etc/confide-witness/logs/")
    ]
    assert len(logs) == replicas["spec"]["replicas"], "one --log per CAS replica"
    # the CAS may reach the witness, and the witness takes connections on its port
    cas_egress = one(witness, "NetworkPolicy", "confide-cas")["spec"]["egress"]
    to_witness = [
        r
        for r in cas_egress
        if r.get("to") == [{"podSelector": {"matchLabels": {WITNESS_LABEL: "confide-witness"}}}]
    ]
    assert [r["ports"] for r in to_witness] == [[{"protocol": "TCP", "port": 8444}]]
    metrics_ingress = {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9090}]}
    witness_ingress = one(witness, "NetworkPolicy", "confide-witness")["spec"]["ingress"]
    assert witness_ingress == [{"ports": [{"protocol": "TCP", "port": 8444}]}, metrics_ingress]
    for overlay in OVERLAYS:  # the metrics port from pods in the cluster only, the API's from anywhere
        cas_ingress = one(render(overlay), "NetworkPolicy", "confide-cas")["spec"]["ingress"]
        assert cas_ingress == [{"ports": [{"protocol": "TCP", "port": 8443}]}, metrics_ingress]


# --- the command lines, run ------------------------------------------------------------------


@dataclass
class Pod:
    """A container of a rendered manifest run here: its volumes are directories under ``root``,
    its environment the manifest's (values from Secrets and ConfigMaps given by the test), its
    args the manifest's with only the listed substitutions (each must match)."""

    workload: dict[str, Any]
    container: dict[str, Any]
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.workload["spec"]["template"]["spec"])

    def volume(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def local(self, path: str) -> str:
        mount = mount_of(self.container, path)
        assert mount is not None, path
        return str(self.volume(mount["name"])) + path[len(mount["mountPath"].rstrip("/")) :]

    def args(self, substitutions: dict[str, str]) -> list[str]:
        env = {**env_values(self.container), **self.env}
        args = expand([str(a) for a in self.container["args"]], env)
        out = []
        used = set()
        for given in args:
            arg = given
            for old, new in substitutions.items():
                if old in arg:
                    arg = arg.replace(old, new)
                    used.add(old)
            out.append(self.local(arg) if arg.startswith("/") else arg)
        assert used == set(substitutions), f"not in the manifest's args: {set(substitutions) - used}"
        return out

    def environment(self) -> dict[str, str]:
        env = {**env_values(self.container), **self.env}
        env = {k: self.local(v) if v.startswith("/") else v for k, v in env.items()}
        for value in env.values():
            assert not value.startswith("<"), f"the test gives no value for {value}"
            if value.startswith(str(self.root)):
                Path(value).mkdir(parents=True, exist_ok=True)
        return {**os.environ, **env, "PYTHONPATH": str(ROOT / "src")}

    def start(self, substitutions: dict[str, str]) -> Pod:
        self.log = self.root / f"{self.container['name']}.log"
        self.log.unlink(missing_ok=True)
        if mount_of(self.container, "/var/lib/confide/cas") is not None:  # a CAS: a fresh client.env
            (Path(self.local("/var/lib/confide/cas")) / "client.env").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "confide", *self.args(substitutions)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.environment())
        return self

    def get(self, path: str, port: int) -> tuple[int, bytes]:
        """A GET over HTTPS as the kubelet's probes make it: the certificate is not checked."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=5) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_for(self, found: Callable[[], T | None], timeout: float = 90.0) -> T:
        """Polls ``found`` until it gives a value (the process must not exit meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.log is not None
            value = found()
            if value is not None:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"nothing after {timeout} s")

    def cas_port(self) -> int:
        """The port ``cas serve --listen 127.0.0.1:0`` bound, from the client.env it writes."""
        env_file = Path(self.local("/var/lib/confide/cas")) / "client.env"

        def port() -> int | None:
            if not env_file.exists():
                return None
            return int(client_env(env_file.parent)["CONFIDE_CAS_URL"].rpartition(":")[2])

        return self.wait_for(port)

    def witness_port(self) -> int:
        """The port ``witness serve --listen 127.0.0.1:0`` bound, from the line it logs."""

        def port() -> int | None:
            assert self.log is not None
            found = re.search(r" at https://127\.0\.0\.1:(\d+)/add-checkpoint", self.log.read_text())
            return int(found.group(1)) if found else None

        return self.wait_for(port)

    def metrics_port(self) -> int:
        """The port ``--metrics-listen 127.0.0.1:0`` bound, from the line the server logs (the
        CAS's ``listening`` line, the ledger servers' banner)."""

        def port() -> int | None:
            assert self.log is not None
            text = self.log.read_text()
            found = re.search(r'"metrics_http": "http://127\.0\.0\.1:(\d+)/metrics"', text) or re.search(
                r"; metrics at http://127\.0\.0\.1:(\d+)/metrics", text
            )
            return int(found.group(1)) if found else None

        return self.wait_for(port)

    def get_plain(self, path: str, port: int) -> tuple[int, bytes]:
        """A GET over plain HTTP (the metrics listener), as Prometheus and the probes make it."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def probe(self, name: str, port: int) -> int:
        """The status of the probe ``name`` as the kubelet makes it (``port``: the API's; the
        metrics listener's from :meth:`metrics_port`)."""
        get = self.container[name]["httpGet"]
        if get["port"] == "metrics":
            assert get["scheme"] == "HTTP"
            return self.get_plain(get["path"], self.metrics_port())[0]
        return self.get(get["path"], port)[0]

    def wait_ready(self, port: int, timeout: float = 90.0) -> None:
        """Polls the startup probe's route until it answers 200 (the process must not exit)."""
        probe = "startupProbe" if "startupProbe" in self.container else "readinessProbe"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.log is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if self.probe(probe, port) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout} s")

    def scrape(self) -> bytes:
        """What Prometheus gets from the annotations' scheme, port (the metrics listener) and path."""
        annotations = self.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scheme"] == "http"
        status, body = self.get_plain(annotations["prometheus.io/path"], self.metrics_port())
        assert status == 200 and b"confide_" in body
        return body

    def check_routes(self, port: int) -> None:
        """Every probe's route and the Prometheus annotations' route answer 200; the API's
        port answers /metrics 404 (served on the metrics listener only)."""
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in self.container:
                assert self.probe(probe, port) == 200, probe
        self.scrape()
        assert self.get("/metrics", port)[0] == 404

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a pod; it must be gone within the grace period."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.spec["terminationGracePeriodSeconds"])
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("not stopped within terminationGracePeriodSeconds") from None
            assert self.proc.returncode in (0, -signal.SIGTERM), self.proc.returncode


def cas_pod(overlay: str, root: Path) -> Pod:
    workload = one(render(overlay), "StatefulSet", "confide-cas")
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return Pod(workload, container, root)


def client_env(data_dir: Path) -> dict[str, str]:
    env = {}
    for line in (data_dir / "client.env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    return env


def run_init_containers(pod: Pod, secrets: dict[str, dict[str, bytes]], *, as_pod_user: bool = False) -> None:
    """The pod's init containers' scripts, with their mounts mapped (Secret volumes filled with
    ``secrets[secretName]``, as the kubelet projects their items). ``as_pod_user``: run as the
    pod's ``runAsUser``/``runAsGroup`` (root only, with setpriv), its Secret files with the mode
    the kubelet gives them under ``fsGroup`` (``defaultMode`` plus group read, owner root)."""
    context = pod.spec["securityContext"]
    user = [
        "setpriv",
        f"--reuid={context['runAsUser']}",
        f"--regid={context['runAsGroup']}",
        "--clear-groups",
    ]
    for init in pod.spec.get("initContainers", []):
        script = init["command"][-1]
        for mount in sorted(init["volumeMounts"], key=lambda m: -len(m["mountPath"])):
            local = pod.volume(mount["name"])
            source = volume_source(pod.spec, pod.workload, mount["name"])
            if "secret" in source:
                data = secrets[source["secret"]["secretName"]]
                for item in source["secret"].get("items", [{"key": k, "path": k} for k in data]):
                    (local / item["path"]).write_bytes(data[item["key"]])
                    if as_pod_user:
                        os.chmod(local / item["path"], source["secret"]["defaultMode"] | 0o040)
                        os.chown(local / item["path"], 0, context["fsGroup"])
            elif as_pod_user:  # the volume as fsGroup leaves it to the pod's user
                for path in (local, *local.rglob("*")):
                    os.chown(path, context["runAsUser"], context["fsGroup"])
            script = script.replace(mount["mountPath"], str(local))
        assert init["command"][:2] == ["/bin/sh", "-c"]
        subprocess.run([*(user if as_pod_user else []), "/bin/sh", "-c", script], check=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_the_init_container_installs_the_key_after_an_attempt_that_was_killed() -> None:
    """As the pod's user (not root: file modes hold), with the Secret's mode under fsGroup: a
    master.key.copy left by an attempt killed between its cp and mv (mode 0400: cp cannot open
    it for writing) does not keep every later attempt from installing the key."""
    with tempfile.TemporaryDirectory() as tmp:  # not pytest's tmp_path: its parent is 0700 root's
        root = Path(tmp)
        root.chmod(0o755)  # the pod's user reaches its volumes
        _init_after_a_killed_attempt(cas_pod("postgres", root / "pod"))


def _init_after_a_killed_attempt(pod: Pod) -> None:
    key = os.urandom(32)
    data = pod.volume("data") / "cas"
    data.mkdir(mode=0o700)
    (data / "master.key.copy").write_bytes(key[:7])  # cut short
    (data / "master.key.copy").chmod(0o400)
    run_init_containers(pod, {"confide-cas-master-key": {"master.key": key}}, as_pod_user=True)
    assert (data / "master.key").read_bytes() == key
    assert not (data / "master.key.copy").exists()
    assert (data / "master.key").stat().st_mode & 0o777 == 0o400


@pytest.mark.slow
def test_sqlite_overlay_runs(tmp_path: Path) -> None:
    pod = cas_pod("sqlite", tmp_path / "pod")
    pod.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0"})
    try:
        port = pod.cas_port()
        pod.wait_ready(port)
        pod.check_routes(port)
        data = pod.volume("data") / "cas"
        assert {"master.key", "cas-key.pem", "cas-cert.pem", "log.key", "cas.db", "run.lock"} <= {
            p.name for p in data.iterdir()
        }
        assert data.stat().st_mode & 0o777 == 0o700
    finally:
        pod.stop()


@pytest.mark.slow
def test_postgres_overlays_run(tmp_path: Path, postgres: Any) -> None:
    """Two replicas of overlays/postgres on one database, each data directory given the master
    key of the Secret by the init container; the master key rotated as docs/deploy.md says;
    then replica 0 as overlays/postgres-witness starts it, with the witness started as its
    Deployment says, once the replicas' log keys are registered with the witness (docs/deploy.md
    "Witnesses")."""
    db_url = postgres.new_database()
    master_key = os.urandom(32)
    secrets = {"confide-cas-master-key": {"master.key": master_key}}
    db = {"postgresql://confide@postgresql:5432/confide": db_url}
    replicas = [cas_pod("postgres", tmp_path / f"confide-cas-{i}") for i in range(2)]
    try:
        for pod in replicas:
            pod.env["PGPASSWORD"] = "unused: the test cluster trusts local connections"
            run_init_containers(pod, secrets)
            pod.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db})
            port = pod.cas_port()
            pod.wait_ready(port)  # OrderedReady: the first one is up before the next starts
            pod.check_routes(port)
        data = [pod.volume("data") / "cas" for pod in replicas]
        assert [(d / "master.key").read_bytes() for d in data] == [master_key, master_key]
        assert (data[0] / "cas-cert.pem").read_bytes() != (data[1] / "cas-cert.pem").read_bytes()
        # A restart's init container never replaces the key a data directory holds.
        run_init_containers(replicas[1], {"confide-cas-master-key": {"master.key": os.urandom(32)}})
        assert (data[1] / "master.key").read_bytes() == master_key
        log_keys = [client_env(d)["CONFIDE_LOG_KEY"] for d in data]
    finally:
        for pod in replicas:
            pod.stop()

    # docs/deploy.md "Rotating the master key", replicas: scaled to 0, the key rotated offline on
    # replica 0's volume, the new key put into the Secret, the other replicas' keys deleted.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rotate = subprocess.run(
        [sys.executable, "-m", "confide", "cas", "rotate-master-key", "--data-dir", str(data[0]), "--db", db_url],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert rotate.returncode == 0, rotate.stderr
    new_key = (data[0] / "master.key").read_bytes()
    assert new_key != master_key
    secrets = {"confide-cas-master-key": {"master.key": new_key}}
    stale = replicas[1]
    run_init_containers(stale, secrets)  # its old key stays: it does not start, and changes nothing
    stale.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db})
    assert stale.proc is not None and stale.log is not None
    assert stale.proc.wait(timeout=60) == 2
    assert "UsageError" in stale.log.read_text()
    (data[1] / "master.key").unlink()
    try:
        for pod in replicas:
            run_init_containers(pod, secrets)
            pod.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db})
            pod.wait_ready(pod.cas_port())
        assert [(d / "master.key").read_bytes() for d in data] == [new_key, new_key]
    finally:
        for pod in replicas:
            pod.stop()

    objects = render("postgres-witness")
    witness_workload = one(objects, "Deployment", "confide-witness")
    witness = Pod(
        witness_workload, witness_workload["spec"]["template"]["spec"]["containers"][0], tmp_path / "w"
    )
    (tmp_path / "tls").mkdir()
    ca, cert, key = tls_server_files(tmp_path / "tls", "witness")
    keygen = [sys.executable, "-m", "confide", "ledger", "keygen"]
    witness_key = witness.local("/etc/confide-witness/key/witness.key")
    vkey = subprocess.run(
        [*keygen, "--name", "confide-witness", "--witness", "--out", witness_key],
        check=True, capture_output=True, text=True, env=env, timeout=60,
    ).stdout.strip()  # fmt: skip
    shutil.copy(cert, witness.local("/etc/confide-witness/tls/tls.crt"))
    shutil.copy(key, witness.local("/etc/confide-witness/tls/tls.key"))
    # Replica 2 was never started here: a log key of its own stands for it.
    spare = subprocess.run(
        [*keygen, "--name", "confide-cas/replica-2", "--out", str(tmp_path / "replica-2.key")],
        check=True, capture_output=True, text=True, env=env, timeout=60,
    ).stdout.strip()  # fmt: skip
    for i, log_key in enumerate([*log_keys, spare]):
        Path(witness.local(f"/etc/confide-witness/logs/confide-cas-{i}.vkey")).write_text(log_key + "\n")
    witness.start({"0.0.0.0:8444": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0"})
    first = cas_pod("postgres-witness", tmp_path / "confide-cas-0")
    try:
        witness_port = witness.witness_port()
        witness.wait_ready(witness_port)
        witness.check_routes(witness_port)
        first.env["PGPASSWORD"] = "unused"
        first.env["CONFIDE_WITNESS_VKEY"] = vkey
        shutil.copy(ca, first.local("/etc/confide/witness/ca.crt"))
        run_init_containers(first, secrets)
        witness_url = {"https://confide-witness:8444": f"https://127.0.0.1:{witness_port}"}
        first.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db, **witness_url})
        port = first.cas_port()
        first.wait_ready(port)
        first.check_routes(port)
        metrics = first.scrape()
        assert b"confide_cas_witness_quorum 1.0" in metrics
        witness_metrics = witness.scrape()
        assert re.search(rb"confide_witness_cosignatures_total\{[^}]*\} [1-9]", witness_metrics)
    finally:
        first.stop()
        witness.stop()


@pytest.mark.slow
def test_postgres_password_from_the_environment(tmp_path: Path) -> None:
    """The postgres overlay's --db URL names no password; the pod's PGPASSWORD (from the Secret
    confide-cas-db) is what libpq gives a server that asks for one. A wrong one stops the CAS
    with a StorageError (exit 50) that does not show it."""
    from cas_harness import PostgresCluster, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (make test installs them)")
    password = os.urandom(12).hex()
    cluster = PostgresCluster(password=password)
    try:
        db_url = cluster.new_database()
        assert password not in db_url
        db = {"postgresql://confide@postgresql:5432/confide": db_url}
        secrets = {"confide-cas-master-key": {"master.key": os.urandom(32)}}
        wrong = cas_pod("postgres", tmp_path / "wrong")
        wrong.env["PGPASSWORD"] = "not-" + password
        run_init_containers(wrong, secrets)
        wrong.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db})
        assert wrong.proc is not None and wrong.log is not None
        assert wrong.proc.wait(timeout=60) == 50
        assert "StorageError" in wrong.log.read_text() and password not in wrong.log.read_text()
        pod = cas_pod("postgres", tmp_path / "pod")
        pod.env["PGPASSWORD"] = password
        run_init_containers(pod, secrets)
        pod.start({"0.0.0.0:8443": "127.0.0.1:0", "0.0.0.0:9090": "127.0.0.1:0", **db})
        try:
            port = pod.cas_port()
            pod.wait_ready(port)
            pod.check_routes(port)
        finally:
            pod.stop()
    finally:
        cluster.stop()


# --- the build context (.dockerignore) --------------------------------------------------------
#
# The context is sent as an allow-list: `.dockerignore` leaves out everything but what the
# Containerfiles under deploy/ take from it (COPY and ADD sources, RUN --mount=type=bind without
# from=). Matched as docker does (moby/patternmatcher, which podman's buildah follows): a line
# is a path pattern relative to the context (`*` and `?` within one path element, `**` across
# elements, `[...]` a class), `!` re-includes, the last line that matches a path or any
# directory above it decides.

CONTAINERFILES = sorted(
    p
    for p in (ROOT / "deploy").rglob("*")
    if p.is_file() and re.fullmatch(r"(Container|Docker)file(\..+)?", p.name)
)
# What a working tree holds beyond a clean checkout, inside the sources sent (left out too).
LEFT_OUT_WITHIN = re.compile(r"(^|/)__pycache__(/|$)|\.pyc$|^src/[^/]*\.egg-info(/|$)")


@dataclass(frozen=True)
class IgnoreRule:
    regex: re.Pattern[str]
    include: bool  # a `!` line


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """One cleaned .dockerignore pattern as moby/patternmatcher compiles it."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i : end + 1]
            i = end
        elif ch == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def parse_dockerignore(text: str) -> list[IgnoreRule]:
    """The rules of a .dockerignore (moby's ReadAll): comment lines and blank lines skipped, each
    pattern stripped, cleaned (``os.path.normpath``) and relative (a leading ``/`` dropped)."""
    rules = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pattern = line.strip()
        include = pattern.startswith("!")
        if include:
            pattern = pattern[1:].strip()
        pattern = os.path.normpath(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        rules.append(IgnoreRule(_ignore_regex(pattern), include))
    return rules


def sent(rules: list[IgnoreRule], path: str) -> bool:
    """Whether ``path`` (relative to the context, ``/``-separated) is sent: the last rule that
    matches it or a directory above it decides; no rule, sent."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        if any(rule.regex.match(c) for c in candidates):
            excluded = not rule.include
    return not excluded


def context_sources(containerfile: str) -> list[str]:
    """What a Containerfile takes from the build context: the sources of each COPY and ADD (not
    ``--from=`` a stage or image) and the ``source=`` of each ``RUN --mount=type=bind`` without
    ``from=``, normalised (``./src/`` is ``src``, ``.`` is the whole context)."""
    lines = [line for line in containerfile.splitlines() if not line.lstrip().startswith("#")]
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        instruction, _, rest = line.strip().partition(" ")
        flags_and_body = re.match(r"((?:--\S+\s+)*)(.*)", rest.strip())
        assert flags_and_body is not None
        flags, body = flags_and_body.group(1).split(), flags_and_body.group(2)
        if instruction.upper() in {"COPY", "ADD"}:
            if any(f.startswith("--from=") for f in flags):
                continue
            paths = json.loads(body) if body.startswith("[") else shlex.split(body)
            assert len(paths) >= 2, f"{instruction} without a source: {line}"
            out += [os.path.normpath(p).lstrip("/") or "." for p in paths[:-1]]
        elif instruction.upper() == "RUN":
            for flag in (f for f in flags if f.startswith("--mount=")):
                options = dict(o.partition("=")[::2] for o in flag[len("--mount=") :].split(","))
                if options.get("type") == "bind" and "from" not in options:
                    out.append(
                        os.path.normpath(options.get("source", options.get("src", "."))).lstrip("/") or "."
                    )
    return out


def test_the_dockerignore_matcher() -> None:
    """The matcher the next test relies on, on docker's documented cases."""
    rules = parse_dockerignore("# note\n*\n!src\n**/__pycache__\n**/*.pyc\nsrc/*.egg-info\n/docs/*.md\n")
    assert sent(rules, "src") and sent(rules, "src/confide/cli.py")
    assert not sent(rules, "src/confide/__pycache__/cli.cpython-311.pyc")
    assert not sent(rules, "src/confide/__pycache__") and not sent(rules, "src/x.pyc")
    assert not sent(rules, "src/confide.egg-info/PKG-INFO") and sent(rules, "src/confide/x.egg-info")
    assert not sent(rules, "README.md") and not sent(rules, ".git/HEAD") and not sent(rules, "# note")
    assert sent(parse_dockerignore("docs/*.md\n"), "docs/a/b.md")  # `*` stays within one element
    assert not sent(parse_dockerignore("docs/*.md\n"), "docs/b.md")
    assert not sent(parse_dockerignore("docs/**/*.md\n"), "docs/a/b/c.md")
    assert not sent(parse_dockerignore("docs/**/*.md\n"), "docs/c.md")
    assert sent(parse_dockerignore("*\n!a/b\n"), "a/b/c") and not sent(parse_dockerignore("*\n!a/b\n"), "a/c")
    assert sent(parse_dockerignore("a?c\n"), "a/c") and not sent(parse_dockerignore("a?c\n"), "abc")
    assert not sent(parse_dockerignore("[ab]x\n"), "bx") and sent(parse_dockerignore("[ab]x\n"), "cx")
    assert context_sources(
        'FROM x AS b\nCOPY --chown=1:1 a.toml "b c" ./\nCOPY --from=b /w /w\nADD ["d/", "/e"]\n'
        "RUN --mount=type=bind,source=f,target=/f \\\n  --mount=type=bind,from=b,source=/g,target=/g true\n"
    ) == ["a.toml", "b c", "d", "f"]


def test_the_build_context_is_what_the_containerfiles_copy() -> None:
    """`.dockerignore` sends every file each Containerfile under deploy/ takes from the context
    (but a working tree's bytecode and egg-info), and nothing else: no .venv, .git or tests."""
    assert CONTAINERFILES, "no Containerfile under deploy/"
    rules = parse_dockerignore((ROOT / ".dockerignore").read_text())
    sources = sorted({s for f in CONTAINERFILES for s in context_sources(f.read_text())})
    assert "src" in sources and "pyproject.toml" in sources
    for source in sources:
        assert source != ".", "a Containerfile copies the whole context"
        assert (ROOT / source).exists(), f"{source}: copied, but not in the checkout"
        assert sent(rules, source), f"{source}: copied by a Containerfile, but left out by .dockerignore"
        under = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
        for path in under:
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file():
                assert sent(rules, rel) != bool(LEFT_OUT_WITHIN.search(rel)), rel
    # Everything else is left out: each entry at the top that is not (above) a source, and
    # what a working checkout holds beside the sources, whether or not it exists here.
    for entry in ROOT.iterdir():
        rel = entry.name
        if not any(s == rel or s.startswith(rel + "/") for s in sources):
            assert not sent(rules, rel), f"{rel}: sent to the daemon, but no Containerfile copies it"
    for rel in (
        ".venv",
        ".venv/bin/python",
        ".git",
        ".git/HEAD",
        "tests",
        "tests/conftest.py",
        "docs",
        ".env",
    ):
        assert not sent(rules, rel), rel


# --- the image, built and run (CONFIDE_TEST_IMAGE=1) -----------------------------------------
#
# deploy/container/Containerfile built with podman (deploy/container/build.sh) and the sqlite
# overlay's CAS container, the postgres overlay's init container and the witness's container run
# from it as the kubelet would: the pod's user and groups, a read-only root, no capability, no
# privilege escalation, its memory limit, its args, env and volumes (directories owned by the
# pod's fsGroup, as the kubelet leaves them), its probes made over the published ports. Off by default (it builds the image: a minute or more, reaching PyPI):
# `CONFIDE_TEST_IMAGE=1 pytest tests/integration/test_deploy.py -k image_` (`make test-image`).
# Without PYTHON_IMAGE in the environment the image is built on a Debian base made here from
# Debian's packages (`build.sh --local-base`, mmdebstrap): no container registry is needed.

BUILD_SH = ROOT / "deploy" / "container" / "build.sh"
LOCAL_BASE = "localhost/confide-base:bookworm-python3"


@dataclass(frozen=True)
class ImageProbes:
    """What decides whether the image tests run, each asked only when needed (the tests of
    :func:`image_tests_verdict` inject their own)."""

    environ: Mapping[str, str]
    which: Callable[[str], str | None]
    euid: Callable[[], int]
    podman_info: Callable[[str], tuple[int, str]]
    """``podman info``: its exit status and stderr."""
    image_exists: Callable[[str, str], bool]
    """``podman image exists NAME`` with that podman."""


def _podman_info(podman: str) -> tuple[int, str]:
    info = subprocess.run([podman, "info"], check=False, capture_output=True, text=True, timeout=120)
    return info.returncode, info.stderr


def _image_exists(podman: str, name: str) -> bool:
    return subprocess.run([podman, "image", "exists", name], check=False, timeout=60).returncode == 0


HOST_PROBES = ImageProbes(os.environ, shutil.which, os.geteuid, _podman_info, _image_exists)


def image_tests_verdict(probes: ImageProbes) -> tuple[str, str]:
    """``("run", podman)`` when the image tests were asked for (``CONFIDE_TEST_IMAGE=1``) and
    can run here; ``("skip", why)`` when they were not asked for (``make test``, CI);
    ``("fail", why)`` when they were asked for but a prerequisite is missing (no podman, not
    root, a podman that cannot run containers, no base image and no way to make one): `make
    test-image` must not pass on tests that did not run."""
    if probes.environ.get("CONFIDE_TEST_IMAGE") != "1":
        return "skip", "builds and runs the container image: set CONFIDE_TEST_IMAGE=1 (make test-image)"
    asked = "CONFIDE_TEST_IMAGE=1, but "
    podman = probes.which("podman")
    if podman is None:
        return "fail", asked + "no container engine: podman is not installed (apt-get install podman)"
    if probes.euid() != 0:
        return (
            "fail",
            asked + "not root: the pod's volumes are directories given to its fsGroup (rootful podman)",
        )
    status, stderr = probes.podman_info(podman)
    if status != 0:
        return (
            "fail",
            asked + f"podman cannot run containers here: {(stderr.strip() or 'podman info failed')[-300:]}",
        )
    if (
        "PYTHON_IMAGE" not in probes.environ
        and probes.which("mmdebstrap") is None
        and not probes.image_exists(podman, LOCAL_BASE)
    ):
        return (
            "fail",
            asked + "no base image: install mmdebstrap (build.sh --local-base), or set PYTHON_IMAGE",
        )
    return "run", podman


def _podman() -> str:
    """podman, when the image tests were asked for and the engine can run containers here; a
    skip when they were not asked for, a failure when they were but cannot run
    (:func:`image_tests_verdict`)."""
    verdict, detail = image_tests_verdict(HOST_PROBES)
    if verdict == "skip":
        pytest.skip(detail)
    if verdict == "fail":
        pytest.fail(detail, pytrace=False)
    return detail


def _probes(
    environ: dict[str, str],
    *,
    which: dict[str, str] | None = None,
    euid: int = 0,
    info: tuple[int, str] = (0, ""),
    base: bool = False,
) -> tuple[ImageProbes, list[str]]:
    """Probes answering as told, and the list of those asked (in order)."""
    asked: list[str] = []
    found = {"podman": "/usr/bin/podman", "mmdebstrap": "/usr/bin/mmdebstrap"} if which is None else which

    def _which(name: str) -> str | None:
        asked.append(f"which {name}")
        return found.get(name)

    def _euid() -> int:
        asked.append("euid")
        return euid

    def _info(podman: str) -> tuple[int, str]:
        asked.append(f"{podman} info")
        return info

    def _exists(podman: str, name: str) -> bool:
        asked.append(f"{podman} image exists {name}")
        return base

    return ImageProbes(environ, _which, _euid, _info, _exists), asked


@pytest.mark.parametrize("environ", [{}, {"CONFIDE_TEST_IMAGE": "0"}, {"CONFIDE_TEST_IMAGE": ""}])
def test_the_image_tests_skip_when_not_asked_for(environ: dict[str, str]) -> None:
    """`make test` (and CI): a skip, whatever the machine has; nothing is probed."""
    probes, asked = _probes(environ, which={}, euid=1000, info=(125, "no"))
    verdict, why = image_tests_verdict(probes)
    assert verdict == "skip" and "CONFIDE_TEST_IMAGE=1" in why
    assert asked == []


@pytest.mark.parametrize(
    ("which", "euid", "info", "why"),
    [
        ({}, 0, (0, ""), "podman is not installed"),
        ({"podman": "/usr/bin/podman"}, 1000, (0, ""), "not root"),
        (
            {"podman": "/usr/bin/podman"},
            0,
            (125, "Error: cannot set up namespace\n"),
            "podman cannot run containers here: Error: cannot set up namespace",
        ),
        ({"podman": "/usr/bin/podman"}, 0, (1, ""), "podman cannot run containers here: podman info failed"),
        ({"podman": "/usr/bin/podman"}, 0, (0, ""), "no base image"),  # no mmdebstrap, no base
    ],
)
def test_the_image_tests_fail_when_asked_for_but_a_prerequisite_is_missing(
    which: dict[str, str], euid: int, info: tuple[int, str], why: str
) -> None:
    """`make test-image` (CONFIDE_TEST_IMAGE=1) on a machine that cannot run them: a failure
    that says why, not a skip."""
    probes, _ = _probes({"CONFIDE_TEST_IMAGE": "1"}, which=which, euid=euid, info=info)
    verdict, detail = image_tests_verdict(probes)
    assert verdict == "fail" and detail.startswith("CONFIDE_TEST_IMAGE=1, but ") and why in detail


def test_the_image_tests_run_when_asked_for_and_possible() -> None:
    asked_for = {"CONFIDE_TEST_IMAGE": "1"}
    probes, asked = _probes(asked_for)  # mmdebstrap makes the base
    assert image_tests_verdict(probes) == ("run", "/usr/bin/podman")
    assert asked == ["which podman", "euid", "/usr/bin/podman info", "which mmdebstrap"]
    probes, asked = _probes(asked_for, which={"podman": "/p/podman"}, base=True)  # the base is there
    assert image_tests_verdict(probes) == ("run", "/p/podman")
    assert asked[-1] == f"/p/podman image exists {LOCAL_BASE}"
    probes, asked = _probes({**asked_for, "PYTHON_IMAGE": "python:3.11"}, which={"podman": "/p/podman"})
    assert image_tests_verdict(probes) == ("run", "/p/podman")  # the base is pulled
    assert asked == ["which podman", "euid", "/p/podman info"]


def test_make_test_image_fails_without_podman(tmp_path: Path) -> None:
    """The image tests as `make test-image` runs them, on a PATH without podman: pytest fails
    (each image test errors, saying why), where it passed with every test skipped."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "CONFIDE_TEST_IMAGE": "1", "PATH": str(empty)}
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:cov",
         f"{__file__}::test_image_config_and_contents"],
        check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:]
    assert "CONFIDE_TEST_IMAGE=1, but no container engine: podman is not installed" in r.stdout
    assert "1 error" in r.stdout and "skipped" not in r.stdout


def _ulimits() -> list[str]:
    """This process's hard limits of open files and processes for the container, as build.sh
    gives them: podman 4.3 asks runc for more than a root without CAP_SYS_RESOURCE may set
    (docs/deploy.md "Built and run here")."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``1Gi``, ``64Mi``, ``512``) in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@pytest.fixture(scope="module")
def image() -> str:
    """The image the sqlite overlay names, built from this checkout by deploy/container/build.sh."""
    podman = _podman()
    name = str(
        one(render("sqlite"), "StatefulSet", "confide-cas")["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
    )
    argv = [str(BUILD_SH)] if "PYTHON_IMAGE" in os.environ else [str(BUILD_SH), "--local-base"]
    build = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "IMAGE": name, "LOCAL_BASE": LOCAL_BASE},
    )  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
    assert subprocess.run([podman, "image", "exists", name], check=False, timeout=60).returncode == 0
    return name


@dataclass
class ImagePod:
    """A container of a rendered manifest run from the image with podman: ``volume(name)`` is
    the host directory behind the pod's volume ``name`` (a Secret or ConfigMap volume is filled
    from ``secrets[name]`` with the kubelet's file modes under fsGroup)."""

    podman: str
    image: str
    workload: dict[str, Any]
    container: dict[str, Any]
    root: Path
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.workload["spec"]["template"]["spec"])

    def volume(self, name: str) -> Path:
        """The volume's directory: owned by root and the pod's fsGroup, group-writable and
        setgid, as the kubelet leaves a PersistentVolume or an emptyDir for a pod with fsGroup."""
        path = self.root / name
        if not path.exists():
            path.mkdir(parents=True)
            os.chown(path, 0, self.spec["securityContext"]["fsGroup"])
            path.chmod(0o2770)
        return path

    def podman_run(self, container: dict[str, Any], name: str) -> list[str]:
        """``podman run`` for ``container`` of this pod, as the kubelet would start it."""
        context, sc = self.spec["securityContext"], container["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"] and context["seccompProfile"]["type"] == "RuntimeDefault"
        argv = [
            self.podman, "run", "--name", name, "--pull=never", *_ulimits(),
            "--user", f"{context['runAsUser']}:{context['runAsGroup']}",
            "--group-add", str(context["fsGroup"]),
            "--cap-drop", "ALL",
            "--memory", str(_bytes(container["resources"]["limits"]["memory"])),
        ]  # fmt: skip
        if sc["readOnlyRootFilesystem"]:
            argv += ["--read-only", "--read-only-tmpfs=false"]
        if sc["allowPrivilegeEscalation"] is False:
            argv += ["--security-opt", "no-new-privileges"]
        for key, value in env_values(container).items():
            assert not value.startswith("<"), f"the test gives no value for {key}"
            argv += ["--env", f"{key}={value}"]
        for mount in container.get("volumeMounts", []):
            source = volume_source(self.spec, self.workload, mount["name"])
            local = self.volume(mount["name"])
            kind = next((k for k in ("secret", "configMap") if k in source), None)
            if kind is not None:  # the kubelet's files: defaultMode (0644 if none), group fsGroup
                ref = source[kind]
                data = self.secrets[ref["secretName" if kind == "secret" else "name"]]
                for item in ref.get("items", [{"key": k, "path": k} for k in data]):
                    (local / item["path"]).write_bytes(data[item["key"]])
                    os.chmod(local / item["path"], ref.get("defaultMode", 0o644) | 0o040)
                    os.chown(local / item["path"], 0, context["fsGroup"])
            readonly = ":ro" if mount.get("readOnly") else ""
            argv += ["--volume", f"{local}:{mount['mountPath']}{readonly}"]
        for port in container.get("ports", []):
            argv += ["--publish", f"127.0.0.1::{port['containerPort']}/tcp"]
        if "command" in container:
            argv += ["--entrypoint", container["command"][0], self.image, *container["command"][1:]]
        else:
            argv += [self.image]
        return [*argv, *expand([str(a) for a in container.get("args", [])], env_values(container))]

    def new_name(self, container: str) -> str:
        """A container name of its own (each is removed by :meth:`remove`)."""
        self.names.append(f"confide-test-{os.getpid()}-{container}-{len(self.names)}")
        return self.names[-1]

    def run_init_containers(self) -> None:
        for init in self.spec.get("initContainers", []):
            name = self.new_name(init["name"])
            done = subprocess.run(
                [*self.podman_run(init, name)], check=False, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr[-3000:]

    def start(self) -> str:
        name = self.new_name(self.container["name"])
        argv = self.podman_run(self.container, name)
        started = subprocess.run([*argv[:2], "--detach", *argv[2:]], check=False, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert started.returncode == 0, started.stderr[-3000:]
        return name

    def inspect(self, name: str, template: str) -> str:
        out = subprocess.run(
            [self.podman, "inspect", "--format", template, name], check=True, capture_output=True, text=True, timeout=60
        )  # fmt: skip
        return out.stdout.strip()

    def logs(self, name: str) -> str:
        out = subprocess.run(
            [self.podman, "logs", name], check=False, capture_output=True, text=True, timeout=60
        )
        return out.stdout + out.stderr

    def host_port(self, name: str, port_name: str) -> int:
        """The host port published for the container's port ``port_name``."""
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port_name]
        out = subprocess.run(
            [self.podman, "port", name, f"{port}/tcp"], check=True, capture_output=True, text=True, timeout=60
        )  # fmt: skip
        return int(out.stdout.strip().splitlines()[0].rpartition(":")[2])

    def probe(self, name: str, probe: str) -> int:
        """The probe's status, made as the kubelet makes it (HTTPS: the certificate unchecked)."""
        get = self.container[probe]["httpGet"]
        url = f"{get['scheme'].lower()}://127.0.0.1:{self.host_port(name, get['port'])}{get['path']}"
        return _get(url)[0]

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        probe = "startupProbe" if "startupProbe" in self.container else "readinessProbe"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect(name, "{{.State.Running}}") != "true":
                raise AssertionError(f"{name} exited: {self.logs(name)[-3000:]}")
            try:
                if self.probe(name, probe) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s: {self.logs(name)[-3000:]}")

    def stop(self, name: str) -> float:
        """SIGTERM (``podman stop``) with the pod's grace period: the exit code must be 0 (the
        CAS stopped by itself, not killed); returns how long it took."""
        grace = self.spec["terminationGracePeriodSeconds"]
        began = time.monotonic()
        subprocess.run([self.podman, "stop", "--time", str(grace), name], check=True, capture_output=True, timeout=grace + 60)  # fmt: skip
        took = time.monotonic() - began
        assert self.inspect(name, "{{.State.ExitCode}}") == "0", self.logs(name)[-3000:]
        return took

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(
                [self.podman, "rm", "--force", name], check=False, capture_output=True, timeout=120
            )


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _in_image(podman: str, image: str, *argv: str, entrypoint: str | None = None) -> str:
    """A command run in a container of the image, read-only root, as the image's user."""
    command = [podman, "run", "--rm", "--pull=never", *_ulimits(), "--read-only", "--network=none"]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    out = subprocess.run([*command, image, *argv], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_image_config_and_contents(image: str) -> None:
    """The image runs `confide` as the manifests' user; its package holds every file of
    src/confide, each module compiled (a read-only root writes no bytecode)."""
    import confide

    podman = _podman()
    assert _in_image(podman, image, "--version").strip() == f"confide, version {confide.__version__}"
    config = json.loads(
        subprocess.run([podman, "image", "inspect", image], check=True, capture_output=True, text=True, timeout=60).stdout
    )[0]["Config"]  # fmt: skip
    context = one(render("sqlite"), "StatefulSet", "confide-cas")["spec"]["template"]["spec"][
        "securityContext"
    ]
    assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert config["Entrypoint"] == ["confide"]
    env = dict(item.partition("=")[::2] for item in config["Env"])
    assert env["XDG_CACHE_HOME"] == "/var/cache/confide" and env["TMPDIR"] == "/tmp"
    assert {"8443/tcp", "9090/tcp"} <= set(config["ExposedPorts"])
    listing = _in_image(
        podman, image, "-c",
        "import confide, os, sys\n"
        "print(sys.implementation.cache_tag)\n"
        "root = os.path.dirname(confide.__file__)\n"
        "for d, dirs, files in os.walk(root):\n"
        "    for f in files:\n"
        "        print(os.path.relpath(os.path.join(d, f), root))\n",
        entrypoint="python3",
    ).split()  # fmt: skip
    source = ROOT / "src" / "confide"
    expected = {
        str(p.relative_to(source)) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    tag, listing = listing[0], listing[1:]
    assert tag == "cpython-311", "the Python the tests run on (docs/deploy.md)"
    installed = {p for p in listing if "__pycache__" not in p}
    assert installed == expected
    for module in (p for p in expected if p.endswith(".py")):
        folder, _, stem = module.rpartition("/")
        compiled = f"{folder + '/' if folder else ''}__pycache__/{stem[:-3]}.{tag}.pyc"
        assert compiled in listing, f"{module}: not compiled for {tag}"


def test_image_runs_the_sqlite_overlay(image: str, tmp_path: Path) -> None:
    """The sqlite overlay's CAS container, run from the image: it answers its probes and
    Prometheus, and a client pinning its certificate and log key verifies its log; it stops on
    SIGTERM within the grace period; restarted on its volume, it presents the same certificate."""
    podman = _podman()
    workload = one(render("sqlite"), "StatefulSet", "confide-cas")
    pod = ImagePod(podman, image, workload, workload["spec"]["template"]["spec"]["containers"][0], tmp_path)
    try:
        name = pod.start()
        pod.wait_ready(name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert pod.probe(name, probe) == 200, probe
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        metrics_port = pod.host_port(name, "metrics")
        assert annotations["prometheus.io/port"] == str(9090)
        status, body = _get(
            f"{annotations['prometheus.io/scheme']}://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}"
        )
        assert status == 200 and b"confide_" in body
        api = pod.host_port(name, "https")
        assert _get(f"https://127.0.0.1:{api}/metrics")[0] == 404
        data = pod.volume("data") / "cas"
        assert {"master.key", "cas-key.pem", "cas-cert.pem", "log.key", "cas.db", "run.lock"} <= {
            p.name for p in data.iterdir()
        }
        assert data.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_uid for p in data.iterdir()} == {
            workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        }
        cert = (data / "cas-cert.pem").read_bytes()
        pinned = ssl.create_default_context(cadata=cert.decode())
        status, body = _get(f"https://localhost:{api}/v1/ready", pinned)
        assert status == 200 and json.loads(body)["status"] == "ready"
        verify = subprocess.run(
            [sys.executable, "-m", "confide", "ledger", "verify", "--url", f"https://127.0.0.1:{api}/v1/log",
             "--key", client_env(data)["CONFIDE_LOG_KEY"], "--cacert", str(data / "cas-cert.pem"),
             "--state", str(tmp_path / "auditor.json"), "--json"],
            check=False, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert json.loads(verify.stdout)["verified"] is True
        assert pod.stop(name) < workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # the StatefulSet's pod comes back on its volume: the certificate clients pinned
        again = pod.start()
        pod.wait_ready(again)
        assert (data / "cas-cert.pem").read_bytes() == cert
        api = pod.host_port(again, "https")
        assert _get(f"https://localhost:{api}/v1/ready", pinned)[0] == 200
        pod.stop(again)
    finally:
        pod.remove()


def test_image_runs_the_postgres_init_container(image: str, tmp_path: Path) -> None:
    """The postgres overlay's init container, run from the image (its /bin/sh, cp, sync, mv) as
    the pod's user with a read-only root: it installs the Secret's master key, and a second run
    with another key leaves the installed one alone."""
    podman = _podman()
    workload = one(render("postgres"), "StatefulSet", "confide-cas")
    spec = workload["spec"]["template"]["spec"]
    key = os.urandom(32)
    pod = ImagePod(
        podman,
        image,
        workload,
        spec["containers"][0],
        tmp_path,
        {"confide-cas-master-key": {"master.key": key}},
    )
    try:
        pod.run_init_containers()
        installed = pod.volume("data") / "cas" / "master.key"
        assert installed.read_bytes() == key
        assert installed.stat().st_mode & 0o777 == 0o400
        assert installed.stat().st_uid == spec["securityContext"]["runAsUser"]
        pod.secrets = {"confide-cas-master-key": {"master.key": os.urandom(32)}}
        pod.run_init_containers()
        assert installed.read_bytes() == key
    finally:
        pod.remove()


def test_image_runs_the_witness(image: str, tmp_path: Path) -> None:
    """The witness Deployment's container, run from the image with its key, TLS certificate and
    log keys as the Secrets and ConfigMap give them: it answers its probes, and cosigns over TLS
    a checkpoint of a log whose key it was given (a CAS replica's), which then verifies with
    that cosignature required; its state is on its volume."""
    from confide.ledger.store import Ledger, connect, write_transaction

    podman = _podman()
    workload = one(render("postgres-witness"), "Deployment", "confide-witness")
    spec = workload["spec"]["template"]["spec"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def ledger(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "confide", "ledger", *args],
            check=False, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    witness_vkey = ledger(
        "keygen", "--name", "confide-witness", "--witness", "--out", str(tmp_path / "w.key")
    )
    log_vkeys = [
        ledger("keygen", "--name", f"confide-cas/replica-{i}", "--out", str(tmp_path / f"log-{i}.key"))
        for i in range(3)
    ]
    (tmp_path / "tls").mkdir()
    ca, cert, key = tls_server_files(tmp_path / "tls", "witness")
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {
        volumes["key"]["secret"]["secretName"]: {"witness.key": (tmp_path / "w.key").read_bytes()},
        volumes["tls"]["secret"]["secretName"]: {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()},
        volumes["logs"]["configMap"]["name"]: {
            f"confide-cas-{i}.vkey": (vkey + "\n").encode() for i, vkey in enumerate(log_vkeys)
        },
    }
    db = tmp_path / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [f"entry {i}".encode() for i in range(10)])
    conn.close()
    ledger("checkpoint", "--log-db", str(db), "--signing-key", str(tmp_path / "log-1.key"))
    pod = ImagePod(podman, image, workload, spec["containers"][0], tmp_path / "pod", files)
    try:
        name = pod.start()
        pod.wait_ready(name)
        for probe in ("readinessProbe", "livenessProbe"):
            assert pod.probe(name, probe) == 200, probe
        url = f"https://127.0.0.1:{pod.host_port(name, 'https')}"
        cosigned = ledger(
            "request-cosignature", "--log-db", str(db), "--witness-url", url,
            "--witness-key", witness_vkey, "--cacert", str(ca),
        )  # fmt: skip
        assert cosigned.startswith("— confide-witness "), cosigned
        verified = ledger(
            "verify", "--log-db", str(db), "--state", str(tmp_path / "auditor.json"),
            "--key", log_vkeys[1], "--witness", witness_vkey,
        )  # fmt: skip
        assert "cosigned by witness confide-witness" in verified
        status, body = _get(f"http://127.0.0.1:{pod.host_port(name, 'metrics')}/metrics")
        assert status == 200
        assert re.search(rb"confide_witness_cosignatures_total\{[^}]*\} 1", body), body[-2000:]
        state = pod.volume("state")
        assert (state / "state.json").is_file()
        assert {p.stat().st_uid for p in state.iterdir()} == {spec["securityContext"]["runAsUser"]}
        pod.stop(name)
    finally:
        pod.remove()
