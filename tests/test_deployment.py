"""Deployment files: the Containerfile and the Kubernetes manifests under k8s/.

No container engine or cluster runs here, so these tests read the files: every manifest has the fields
its kind needs, the files agree with each other (shard counts, GPU counts, rendezvous names, mounts),
and every `ctslice ...` the containers run (directly, in `sh -c` scripts, after `torchrun -m ctslice`)
is one the CLI accepts, so that a misspelled option fails here and not after an hour in a cluster queue.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GPU = "nvidia.com/gpu"
WORKLOAD_KINDS = {"Job", "Pod"}


# ---------------------------------------------------------------- the Containerfile

def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):  # comments may sit inside continuations
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def env_pairs(arguments: str) -> dict[str, str]:
    """ENV KEY=VALUE ... (or the legacy ENV KEY VALUE)."""
    words = shlex.split(arguments)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@dataclass
class Image:
    base: str = ""
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, absolute destination)
    runs: list[str] = field(default_factory=list)
    user: str | None = None
    user_before_entrypoint: bool = False
    entrypoint: list[str] = field(default_factory=list)

    def repo_path(self, container_path: str) -> Path | None:
        """The repository file a path inside the image comes from (via a COPY of a folder), if any."""
        for sources, destination in self.copies:
            for source in sources:
                if (REPO / source).is_dir() and is_under(container_path, destination):
                    return REPO / source / posixpath.relpath(container_path, destination)
        return None


def read_image() -> Image:
    image = Image()
    for keyword, arguments in containerfile():
        if keyword == "FROM":
            image.base = arguments.split()[0]
        elif keyword == "WORKDIR":
            image.workdir = posixpath.join(image.workdir, arguments)
        elif keyword == "ENV":
            image.env.update(env_pairs(arguments))
        elif keyword == "VOLUME":
            image.volumes += json.loads(arguments) if arguments.startswith("[") else arguments.split()
        elif keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            destination = posixpath.join(image.workdir, words[-1])
            image.copies.append((words[:-1], destination))
        elif keyword == "RUN":
            image.runs.append(arguments)
        elif keyword == "USER":
            image.user = arguments
        elif keyword == "ENTRYPOINT":
            image.entrypoint = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
            image.user_before_entrypoint = image.user is not None
    return image


def is_under(path: str, folder: str) -> bool:
    path, folder = posixpath.normpath(path), posixpath.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


IMAGE = read_image() if CONTAINERFILE.exists() else Image()


def test_containerfile_base_is_an_official_cuda_pytorch_image():
    match = re.fullmatch(r"(?:docker\.io/)?pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda[\d.]+-cudnn\d+-runtime", IMAGE.base)
    assert match, f"FROM {IMAGE.base!r}: expected pytorch/pytorch:<torch>-cuda<X>-cudnn<Y>-runtime"
    assert (int(match[1]), int(match[2])) >= (2, 8), f"{IMAGE.base}: torch >= 2.8 (pyproject.toml)"
    assert sum(keyword == "FROM" for keyword, _ in containerfile()) == 1


def test_containerfile_installs_the_project_and_runs_ctslice_as_a_non_root_user():
    assert any(re.search(r"pip install (--?[\w-]+(=\S+)? |-c \S+ )*\.(\s|$)", run) for run in IMAGE.runs), IMAGE.runs
    assert IMAGE.entrypoint and posixpath.basename(IMAGE.entrypoint[0]) == "ctslice", IMAGE.entrypoint
    assert IMAGE.user_before_entrypoint, "USER must come before ENTRYPOINT"
    user = IMAGE.user.split(":")[0]
    assert user not in ("root", "0"), f"USER {IMAGE.user}"


def test_containerfile_copies_the_code_but_no_weights_or_data():
    copied = [source for sources, _ in IMAGE.copies for source in sources]
    assert {"pyproject.toml", "README.md", "ctslice"} <= {source.rstrip("/") for source in copied}, copied
    assert not any(keyword == "ADD" for keyword, _ in containerfile()), "COPY only: ADD fetches URLs and unpacks"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        name = source.rstrip("/").lower()
        assert not fnmatch.fnmatch(name, "*.pt") and not fnmatch.fnmatch(name, "*.h5"), f"COPY {source}"
        assert not re.search(r"(^|/)(weights|data|runs|scratch|\.venv)$", name), f"COPY {source}: data, not code"


def test_vae_weights_and_outputs_are_mounted_volumes():
    weights = IMAGE.env.get("CTSLICE_MAISI_VAE", "")
    assert weights.startswith("/") and weights.endswith(".pt"), f"CTSLICE_MAISI_VAE={weights!r}"
    assert any(is_under(weights, volume) for volume in IMAGE.volumes), f"{weights} is not under a VOLUME"
    assert not any(is_under(weights, destination) for _, destination in IMAGE.copies), "weights are COPYed"
    for folder in ("/data", "/runs"):
        assert folder in IMAGE.volumes
    assert "expandable_segments:True" in IMAGE.env.get("PYTORCH_CUDA_ALLOC_CONF", "")


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    excluded = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("path", [
    ".venv/bin/python", "runs/full/checkpoints/latest.pt", "scratch/c.h5", ".git/HEAD", ".pytest_cache/v/x",
    "ctslice/__pycache__/cli.cpython-311.pyc", "ctslice.egg-info/PKG-INFO", ".ruff_cache/x", "cache.h5",
    "data/raw/scan.nii.gz", "weights/autoencoder_v1.pt", "ctslice/codecs/autoencoder_v1.pt", "tests/test_io.py",
])
def test_build_context_leaves_out(path):
    assert dockerignore_excludes(path), f"{path} would be sent to the container build"


def test_build_context_keeps_what_the_containerfile_copies():
    for sources, _ in IMAGE.copies:
        for source in sources:
            root = REPO / source
            files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
            files = [p for p in files if "__pycache__" not in p.parts]
            for path in files[:50]:
                relative = path.relative_to(REPO).as_posix()
                assert not dockerignore_excludes(relative), f"{relative} is COPYed but left out of the build context"


# ---------------------------------------------------------------- the manifests

def manifests() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(K8S.glob("*.y*ml")):
        text = path.read_text(encoding="utf-8")
        documents += [(path.name, doc) for doc in yaml.safe_load_all(text) if doc is not None]
    return documents


MANIFESTS = manifests() if K8S.is_dir() else []


def named(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc.get("kind") == kind}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Job" else doc["spec"]


def workloads() -> list[tuple[str, dict]]:
    return [(file, doc) for file, doc in MANIFESTS if doc.get("kind") in WORKLOAD_KINDS]


def all_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def test_manifests_exist_and_cover_the_pipeline():
    kinds = [(doc.get("kind"), doc["metadata"]["name"]) for _, doc in MANIFESTS]
    assert ("PersistentVolumeClaim", "ctslice-data") in kinds, kinds
    assert any(job.get("spec", {}).get("completionMode") == "Indexed" for job in named("Job").values())
    assert len(named("Job")) >= 4, kinds  # preprocess shards, merge + split, one GPU, torchrun


@pytest.mark.parametrize(("file", "doc"), MANIFESTS,
                         ids=[f"{file}:{doc.get('metadata', {}).get('name')}" for file, doc in MANIFESTS])
def test_manifest_has_the_fields_of_its_kind(file, doc):
    assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), file
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
    kind = doc["kind"]
    if kind == "PersistentVolumeClaim":
        assert doc["apiVersion"] == "v1"
        assert doc["spec"]["accessModes"], file
        assert re.fullmatch(r"\d+(Ki|Mi|Gi|Ti)", doc["spec"]["resources"]["requests"]["storage"])
    elif kind == "Service":
        assert doc["apiVersion"] == "v1" and doc["spec"]["selector"] and doc["spec"]["ports"]
    elif kind == "Job":
        assert doc["apiVersion"] == "batch/v1"
        spec = doc["spec"]
        assert spec["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        if "podFailurePolicy" in spec:  # the API rejects it with OnFailure
            assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert isinstance(spec.get("backoffLimit", 6), int)
        if spec.get("completionMode") == "Indexed":
            assert isinstance(spec["completions"], int) and spec["completions"] >= 1
            assert 1 <= spec.get("parallelism", 1) <= spec["completions"]
        # Finished Jobs are cleaned up, but late enough for `kubectl wait` and `kubectl logs` to find them.
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{file}: ttlSecondsAfterFinished"
        assert spec["ttlSecondsAfterFinished"] >= 3600, f"{file}: ttlSecondsAfterFinished under an hour"
        for rule in spec.get("podFailurePolicy", {}).get("rules", []):
            assert bool(rule.get("onExitCodes")) != bool(rule.get("onPodConditions")), f"{file}: one of the two"
            for pattern in rule.get("onPodConditions") or []:  # the API requires the status of the condition
                assert pattern.get("status") in ("True", "False", "Unknown"), f"{file}: {pattern}"
    elif kind == "Pod":
        assert doc["apiVersion"] == "v1" and doc["spec"]["restartPolicy"] in ("Never", "OnFailure")
    else:
        pytest.fail(f"{file}: unexpected kind {kind}")
    if kind in WORKLOAD_KINDS:
        check_pod(file, doc)


def check_pod(file: str, doc: dict) -> None:
    spec = pod_spec(doc)
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    claims = named("PersistentVolumeClaim")
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{file}: no such claim {volume}"
    context = spec.get("securityContext", {})
    assert context.get("runAsNonRoot") is True, f"{file}: runAsNonRoot"
    if "runAsUser" in context:  # files on the shared claims belong to the image's user
        assert str(context["runAsUser"]) == IMAGE.user.split(":")[0], f"{file}: runAsUser {context['runAsUser']}"
    for container in all_containers(doc):
        where = f"{file}: container {container.get('name')}"
        assert container.get("name") and container.get("image"), where
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where}: resources.{section}"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{where}: mounts undeclared volume {mount['name']}"
        if gpus(container):
            requested = resources["requests"].get(GPU)
            assert requested is None or int(requested) == gpus(container), f"{where}: GPU requests != limits"
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert "expandable_segments:True" in (env.get("PYTORCH_CUDA_ALLOC_CONF") or ""), where
            shm = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert shm and volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", \
                f"{where}: a memory emptyDir at /dev/shm for DataLoader workers and NCCL"


def test_shared_claims_are_read_write_many_and_weights_mount_read_only():
    for name, claim in named("PersistentVolumeClaim").items():
        assert "ReadWriteMany" in claim["spec"]["accessModes"], name  # pods on several nodes share them
    weights_folder = posixpath.dirname(IMAGE.env["CTSLICE_MAISI_VAE"])
    trainers = [doc for _, doc in workloads() if any("train" in inv.args[:1] for inv in invocations_of(doc))]
    assert trainers
    for doc in trainers:
        spec = pod_spec(doc)
        for container in spec["containers"]:
            mounts = [m for m in container["volumeMounts"] if m["mountPath"] == weights_folder]
            assert mounts and mounts[0].get("readOnly"), f"{doc['metadata']['name']}: {weights_folder} read-only"


# ---------------------------------------------------------------- the commands the containers run

SHELL_WORDS = {"exec", "then", "else", "do", "!", "time", "nohup"}


@dataclass
class Invocation:
    where: str           # job/container
    args: list[str]      # after `ctslice`, variables substituted
    doc: dict
    container: dict
    launcher: list[str]  # what ran ctslice: [] directly, or the torchrun/python words before it
    problems: list[str]  # variables that nothing defines


def sample_env(doc: dict, container: dict, index: int = 0, shell: bool = False) -> dict[str, str]:
    """What $(VAR) stands for in command/args: the container's env and, in an Indexed Job, the index the
    Job controller adds. A shell also sees the image's ENV and the runtime's HOSTNAME."""
    env = {**IMAGE.env, "HOSTNAME": f"{doc['metadata']['name']}-{index}", "HOME": "/home/user"} if shell else {}
    if doc["kind"] == "Job" and doc["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = str(index)
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", f"<{item['name']}>"))
    return env


def expand_kubernetes(word: str, env: dict[str, str], problems: list[str]) -> str:
    """$(VAR) as Kubernetes expands it in command and args; an undefined one stays as written."""
    def value(match):
        if match[1] not in env:
            problems.append(f"$({match[1]}) is not defined in the container: Kubernetes passes it on literally")
        return env.get(match[1], match[0])
    return re.sub(r"(?<!\$)\$\(([A-Za-z_]\w*)\)", value, word)


def expand_shell(word: str, env: dict[str, str], problems: list[str]) -> str:
    def value(match):
        name = match[1] or match[2]
        if name not in env:
            problems.append(f"${name} is not set in the container")
        return env.get(name, "")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, word)


def ctslice_words(words: list[str]) -> tuple[list[str], list[str]] | None:
    """(launcher, ctslice arguments) when `words` runs ctslice, else None."""
    while words and (words[0] in SHELL_WORDS or re.fullmatch(r"\w+=\S*", words[0])):
        words = words[1:]
    if not words:
        return None
    program = posixpath.basename(words[0])
    if program == "ctslice":
        return [], words[1:]
    if program in ("torchrun", "python", "python3") and "-m" in words:
        at = words.index("-m")
        if words[at + 1:at + 2] == ["ctslice"]:
            return words[:at + 2], words[at + 2:]
    return None


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script: split at newlines and at ; && || | ( )."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|()"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [command for command in commands if command]


def invocations_of(doc: dict, index: int = 0) -> list[Invocation]:
    found = []
    for container in all_containers(doc):
        where = f"{doc['metadata']['name']}/{container['name']}"
        env = sample_env(doc, container, index)
        raw = list(container.get("command") or IMAGE.entrypoint) + list(container.get("args", []))
        problems: list[str] = []
        words = [expand_kubernetes(str(word), env, problems) for word in raw]
        if posixpath.basename(words[0]) in ("sh", "bash") and "-c" in words:
            for command in shell_commands(words[words.index("-c") + 1]):
                hit = ctslice_words(command)
                if hit:
                    shell_env = sample_env(doc, container, index, shell=True)
                    args = [expand_shell(word, shell_env, problems) for word in hit[1]]
                    found.append(Invocation(where, args, doc, container, hit[0], problems))
        else:
            hit = ctslice_words(words)
            if hit:
                found.append(Invocation(where, hit[1], doc, container, hit[0], problems))
    return found


INVOCATIONS = [inv for _, doc in workloads() for inv in invocations_of(doc)]


def cli_command(name: str):
    import typer

    from ctslice.cli import app

    group = typer.main.get_command(app)
    assert name in group.commands, f"`ctslice {name}`: no such command (did you mean " \
        f"{difflib.get_close_matches(name, list(group.commands))}?)"
    return group.commands[name]


def parse_invocation(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Options (by parameter name, values) and positional arguments, checked against the declared params."""
    command = cli_command(args[0])
    options = {opt: p for p in command.params if p.param_type_name == "option" for opt in p.opts + p.secondary_opts}
    given: dict[str, list[str]] = {}
    positional: list[str] = []
    words = list(args[1:])
    while words:
        word = words.pop(0)
        if word == "--":
            positional += words
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, has_value, value = word.partition("=") if word.startswith("--") else (word, "", "")
        assert name in options, f"`ctslice {args[0]}` has no option {name} (did you mean " \
            f"{difflib.get_close_matches(name, list(options))}?); it declares {sorted(options)}"
        param = options[name]
        if param.is_flag or param.count:
            assert not has_value, f"{name} takes no value"
            given.setdefault(param.name, []).append("true")
            continue
        if not has_value:
            assert words and not words[0].startswith("--"), f"{name} needs a value"
            value = words.pop(0)
        given.setdefault(param.name, []).append(value)
    for param in command.params:
        if param.required and param.param_type_name == "option":
            assert param.name in given, f"`ctslice {args[0]}` needs {param.opts[-1]}"
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    needed = sum(1 if p.nargs == -1 else p.nargs for p in arguments if p.required)
    assert len(positional) >= needed, f"`ctslice {args[0]}` needs {needed} argument(s), got {positional}"
    if not any(p.nargs == -1 for p in arguments):
        assert len(positional) <= sum(p.nargs for p in arguments), f"unexpected arguments {positional}"
    return given, positional


def test_every_job_runs_ctslice():
    for _, doc in workloads():
        if doc["kind"] == "Job":
            assert invocations_of(doc), f"{doc['metadata']['name']} runs no ctslice command"
    commands = {(inv.args[0], "merge" in parse_invocation(inv.args)[0]) for inv in INVOCATIONS}
    assert {("preprocess", False), ("preprocess", True), ("split", False), ("train", False)} <= commands


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[f"{inv.where}:{inv.args[0]}" for inv in INVOCATIONS])
def test_invocation_is_valid(invocation):
    from typer.testing import CliRunner

    from ctslice.cli import app

    assert not invocation.problems, f"{invocation.where}: {invocation.problems}"
    result = CliRunner().invoke(app, invocation.args + ["--help"])
    assert result.exit_code == 0, f"{invocation.where}: ctslice {' '.join(invocation.args)}\n{result.output}"
    given, positional = parse_invocation(invocation.args)
    # Paths it reads or writes must be on a volume of the pod (or in the image): else outputs vanish with it.
    mounts = [m["mountPath"] for m in invocation.container.get("volumeMounts", [])]
    values = positional + [v.split("=", 1)[-1] for values in given.values() for v in values]
    for path in (v for v in values if v.startswith("/")):
        in_image = any(is_under(path, destination) for _, destination in IMAGE.copies)
        assert in_image or any(is_under(path, mount) for mount in mounts), f"{invocation.where}: {path} not mounted"
    for override in given.get("overrides", []):
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+=.+", override), f"--set {override}: expected section.key=value"


def test_training_jobs_resume_after_preemption():
    trainers = [inv for inv in INVOCATIONS if inv.args[0] == "train"]
    assert len(trainers) >= 2
    for inv in trainers:
        given, _ = parse_invocation(inv.args)
        assert given.get("resume") == ["latest"], f"{inv.where}: a replaced pod must continue with --resume latest"
        assert given.get("out"), f"{inv.where}: --out on the shared volume, where --resume latest looks"
        job = inv.doc
        assert job["kind"] == "Job" and job["spec"].get("backoffLimit", 6) >= 1, inv.where
        assert job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) >= 120, \
            f"{inv.where}: time for the SIGTERM checkpoint"
        assert gpus(inv.container) >= 1, f"{inv.where}: no {GPU} limit"
        assert pod_spec(job).get("nodeSelector") or pod_spec(job).get("tolerations") or pod_spec(job).get("affinity")


def test_preprocessing_shards_cover_every_index_and_merge_them_all():
    sharded = [inv for inv in INVOCATIONS if inv.args[0] == "preprocess" and "shard" in parse_invocation(inv.args)[0]]
    merges = [inv for inv in INVOCATIONS if "merge" in parse_invocation(inv.args)[0]]
    assert len(sharded) == 1 and len(merges) == 1
    job = sharded[0].doc
    completions = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed"
    outputs = set()
    for index in range(completions):
        (inv,) = invocations_of(job, index)
        given, _ = parse_invocation(inv.args)
        assert given["shard"] == [f"{index}/{completions}"], f"--shard {given['shard']} in pod {index} of {completions}"
        outputs |= set(given["output"])
    assert len(outputs) == completions, f"the shards write one file each: {sorted(outputs)}"
    merge = merges[0]
    _, inputs = parse_invocation(merge.args)
    assert all(any(fnmatch.fnmatch(out, pattern) for pattern in inputs) for out in outputs), (inputs, sorted(outputs))
    shards_env = sample_env(merge.doc, merge.container).get("SHARDS")
    assert shards_env is None or int(shards_env) == completions, "SHARDS in the merge Job != preprocess completions"
    splits = [inv for inv in INVOCATIONS if inv.args[0] == "split" and inv.doc is merge.doc]
    assert splits and splits[0].args[1] == parse_invocation(merge.args)[0]["output"][0], "split the merged cache"


def test_torchrun_job_matches_its_gpus_and_rendezvous_service():
    launched = [inv for inv in INVOCATIONS if inv.launcher and posixpath.basename(inv.launcher[0]) == "torchrun"]
    assert launched, "no `torchrun ... -m ctslice train` job"
    assert (REPO / "ctslice" / "__main__.py").exists(), "`-m ctslice` needs ctslice/__main__.py"
    services = named("Service")
    for inv in launched:
        flags = dict(word.lstrip("-").split("=", 1) for word in inv.launcher[1:-2] if "=" in word)
        assert int(flags["nproc_per_node"]) == gpus(inv.container), "one process per GPU of the pod"
        low, _, high = flags["nnodes"].partition(":")
        job = inv.doc
        assert int(high or low) <= job["spec"].get("completions", 1) and int(low) >= 1, flags["nnodes"]
        assert flags["rdzv_backend"] == "c10d" and flags.get("rdzv_id"), flags
        host, port = flags["rdzv_endpoint"].rsplit(":", 1)
        subdomain = pod_spec(job)["subdomain"]
        assert host.split(".")[:2] == [f"{job['metadata']['name']}-0", subdomain], \
            f"rendezvous {host}: pod 0 of an Indexed Job is <job>-0.<subdomain>"
        service = services[subdomain]
        assert service["spec"]["clusterIP"] == "None", "a headless Service gives the pods DNS names"
        assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]
        env = sample_env(job, inv.container)
        assert int(env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30)) < pod_spec(job)["terminationGracePeriodSeconds"]


def test_training_overrides_are_config_keys():
    """`--set key=value` goes through the config's own validation: a misspelled key is an error here."""
    from ctslice.config import load_config

    for inv in (inv for inv in INVOCATIONS if inv.args[0] == "train"):
        load_config(None, parse_invocation(inv.args)[0].get("overrides", []))


def test_manifests_reference_existing_configs():
    """Every config a manifest names (in a command or a comment) is in configs/, where the image copies it from."""
    referenced = set()
    for path in sorted(K8S.glob("*.y*ml")):
        referenced |= set(re.findall(r"/app/ctslice/configs/[\w.-]+\.ya?ml", path.read_text(encoding="utf-8")))
    referenced |= {v for inv in INVOCATIONS for v in parse_invocation(inv.args)[0].get("config", [])}
    assert referenced
    missing = [f"{name} -> {IMAGE.repo_path(name)}" for name in sorted(referenced)
               if IMAGE.repo_path(name) is None or not IMAGE.repo_path(name).is_file()]
    assert not missing, f"configs named by k8s/ but not in the repository: {missing}"
    from ctslice.config import load_config

    for inv in (inv for inv in INVOCATIONS if inv.args[0] == "train"):
        given = parse_invocation(inv.args)[0]
        load_config(IMAGE.repo_path(given["config"][0]), given.get("overrides", []))


# ---------------------------------------------------------------- what API servers and Pod Security accept

def kubernetes_versions() -> list[str]:
    """Every minor version from 1.28 to the newest kubernetes-validate knows (["missing"] without it)."""
    try:
        from kubernetes_validate.utils import all_versions
    except ImportError:
        return ["missing"]
    minors = {tuple(int(n) for n in version.split(".")[:2]) for version in all_versions()}
    return [f"{major}.{minor}" for major, minor in sorted(minors) if (major, minor) >= (1, 28)]


@pytest.mark.parametrize("version", kubernetes_versions())
def test_manifests_pass_strict_schema_validation(version):
    """`kubernetes-validate --strict`: the OpenAPI schema of each API server version, unknown fields refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    failures = []
    for file, doc in MANIFESTS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{file} {doc['kind']}/{doc['metadata']['name']}: {error.path}: {error.message}")
    assert not failures, f"Kubernetes {version}:\n" + "\n".join(failures)


def test_strict_validation_covers_the_newest_kubernetes_known():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    versions = kubernetes_versions()
    assert versions[0] == "1.28" and versions[-1] == newest, versions


@pytest.mark.parametrize(("file", "doc"), workloads(), ids=[f"{f}:{d['metadata']['name']}" for f, d in workloads()])
def test_containers_meet_the_restricted_pod_security_standard(file, doc):
    """What the "restricted" Pod Security level demands of every container, plus a read-only root filesystem:
    then whatever a container writes outside /tmp must go to a volume."""
    spec = pod_spec(doc)
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    runs_ctslice = {inv.container["name"] for inv in invocations_of(doc)}
    assert spec.get("securityContext", {}).get("runAsNonRoot") is True, file
    for container in all_containers(doc):
        where = f"{file}: container {container['name']}"
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation: false"
        assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop: [ALL]"
        assert not context.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
        seccomp = context.get("seccompProfile") or spec.get("securityContext", {}).get("seccompProfile", {})
        assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile RuntimeDefault"
        assert context.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert not context.get("privileged") and context.get("runAsUser", 1) != 0, where
        if container["name"] in runs_ctslice:  # temporary files (unzipped scans, torchrun) and caches under HOME
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{where}: no /tmp emptyDir"
            assert not mounts["/tmp"].get("readOnly"), where
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert is_under(env.get("HOME", "/home"), "/tmp"), f"{where}: HOME on the read-only root filesystem"
