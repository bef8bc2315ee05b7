"""infra/docker/Dockerfile, checked without a container engine (none is available here): the instructions are
parsed and the properties the deployment relies on are asserted (CUDA runtime base, Python 3.11 as pyproject
requires, dependencies from pyproject.toml itself, non-root numeric user, no secrets, the /app layout the RayJob
entrypoints use, what KubeRay's probes need)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
SECRET_WORDS = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued instruction"
    return instructions


INSTRUCTIONS = parse_dockerfile((DOCKER / "Dockerfile").read_text())


def args_of(keyword: str) -> list[str]:
    return [a for k, a in INSTRUCTIONS if k == keyword]


def build_args() -> dict[str, str]:
    """Defaults of the global ARGs (declared before the first FROM; a stage re-declares them without a value)."""
    out = {}
    for keyword, args in INSTRUCTIONS:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in INSTRUCTIONS:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def test_parser_handles_continuations_and_comments():
    parsed = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n    # inner comment\n    && y\nUSER 1000\n")
    assert parsed == [("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1000")]


def test_base_is_a_cuda_runtime_image():
    base = build_args()["CUDA_BASE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu\d+\.\d+", base), base
    final = stages()[-1]
    assert final[0][1].split()[0] == "${CUDA_BASE}", "the runtime stage must be built on the CUDA base"


def test_python_version_satisfies_requires_python():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    version = build_args()["PYTHON_VERSION"]
    assert version == "3.11"
    assert ">=3.11" in requires and "<3.12" in requires


def test_dependencies_come_from_pyproject_not_a_second_list():
    runs = " ".join(args_of("RUN"))
    assert re.search(r"pip install[^&]*-r /src/pyproject\.toml", runs), (
        "dependencies must be installed from pyproject"
    )
    assert re.search(r"pip install[^&]*--no-deps /src\b", runs), "the project itself must be installed"
    # No hand-written package list that could drift from pyproject (any 'pip install <name>==...' or '<name>>=').
    assert not re.search(r"pip install[^&]*\b[a-z][\w-]*(==|>=)", runs), (
        "packages pinned outside pyproject.toml"
    )
    copies = args_of("COPY")
    assert any(c.split()[-2:] == ["pyproject.toml", "/src/pyproject.toml"] for c in copies)


def test_runs_as_a_numeric_non_root_user():
    final = stages()[-1]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric (runAsNonRoot checks it) and not root"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert [k for k, _ in final].index("USER") > max(
        i for i, (k, _) in enumerate(final) if k in ("RUN", "COPY")
    ), "USER must come after the last RUN/COPY of the runtime stage"


def test_no_secrets_in_args_env_or_context():
    for keyword in ("ARG", "ENV"):
        for args in args_of(keyword):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split("=")[0]]
            for name in names:
                assert not SECRET_WORDS.search(name), f"{keyword} {name}: no credentials in the image"
    assert not any("--mount=type=secret" in a for a in args_of("RUN")), "no build secrets are needed"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".git", ".venv", ".env", "**/*.pem", ".aws", "**/auth_token"):
        assert pattern in ignore, f"the build context must exclude {pattern}"


def test_copy_sources_exist_and_app_layout_matches_the_manifests():
    for args in args_of("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(a.startswith("--from") for a in args.split()):
            continue
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    final = stages()[-1]
    assert ("WORKDIR", "/app") in final
    assert any(k == "COPY" and a.split()[-1] == "/app" for k, a in final)
    k8s_text = "".join(p.read_text() for p in (REPO / "infra" / "k8s").glob("rayjob-*.yaml"))
    assert "/app/jobs/" in k8s_text and "/app/configs/" in k8s_text


def test_what_kuberay_needs_is_installed():
    runtime_runs = " ".join(a for k, a in stages()[-1] if k == "RUN")
    assert re.search(r"apt-get install[^&]*\bwget\b", runtime_runs), "KubeRay's health probes call wget"
    env = " ".join(a for k, a in stages()[-1] if k == "ENV")
    assert "PATH=/opt/venv/bin:" in env, (
        "`ray` and `python` of the venv must be on PATH for `ray start` and jobs"
    )


def test_the_video_decoder_and_its_ffmpeg_libraries_are_installed():
    """torchcodec (pyproject's 'video' extra) decodes the jobs' videos in the image; it needs FFmpeg's shared
    libraries in the runtime stage, and the image checks at build time that it found them."""
    build_runs = " ".join(a for k, a in stages()[-2] if k == "RUN")
    assert re.search(r"pip install[^&]*-r /src/pyproject\.toml[^&]*--extra video", build_runs)
    assert 'video = ["torchcodec' in (REPO / "pyproject.toml").read_text()
    runtime_runs = " ".join(a for k, a in stages()[-1] if k == "RUN")
    for library in ("libavcodec", "libavformat", "libavutil", "libswscale", "libavfilter", "libavdevice"):
        assert re.search(rf"apt-get install[^&]*\b{library}\d+", runtime_runs), library
    assert "video_decoder() == 'torchcodec'" in runtime_runs


@pytest.mark.parametrize("doc", ["README.md"])
def test_readme_has_build_and_push_commands(doc):
    text = (DOCKER / doc).read_text()
    assert "docker build -f infra/docker/Dockerfile" in text
    assert "docker push" in text
