"""Carries out a Dockerfile's steps without a Docker engine, to prove a recipe builds and runs.

No Docker engine runs on the machines that test TAI, so this plays the engine's part for the
instructions the recipe uses: each stage gets a folder for its file system and a fresh venv for
the base image's Python (`/usr/local` in the `python:*-slim` images); COPY takes files from the
build context as filtered by `.dockerignore`, or from an earlier stage; RUN runs the command with
bash in the stage's working directory, its absolute paths mapped into the stage's folder. A
stage built FROM an earlier one (`FROM install AS tai-server`, and the last FROM naming one of
those through a build argument) takes over its files and settings; it may add settings (ENV,
EXPOSE, ENTRYPOINT…) but not change files, since it shares the earlier stage's folder here where
Docker would give it a layer of its own. As BuildKit does before building anything, every FROM
is resolved first: one that names neither a stage nor a `python:*` image (the only base images
emulated here) stops the build, as the failed pull would.

What it cannot do on the host is left out and recorded: `useradd` (a user on this machine) and
USER (the tests run as whoever runs them). `--no-cache-dir` is dropped from pip commands so the
test reuses pip's cache; caching does not change what gets installed.

The Dockerfile is parsed by `dockerfile` (Moby's own parser). The `.dockerignore` matching is
written here because no maintained PyPI package implements Docker's rules (pathspec implements
gitignore's, which match a bare name at any depth where Docker matches it at the root only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile


class RecipeError(RuntimeError):
    """A step of the recipe failed; the message names the Dockerfile line and the output."""


# What the recipe's FROM may name besides its own stages: the images whose Python is emulated.
EMULATED_BASE = re.compile(r"python:[\w.-]+$")


def expand(text: str, variables: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by their values ("" when unset), as Docker expands the
    instructions that take variables (FROM with the global ARGs, EXPOSE, ENV…)."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))",
        lambda m: variables.get(m.group(1) or m.group(2), ""),
        text,
    )


def dockerignore_patterns(context: Path) -> list[tuple[re.Pattern[str], bool]]:
    """`.dockerignore`'s patterns as (regex, is_exception), in file order."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((re.compile(regex + "$"), exception))
    return patterns


def ignored(relative: str, patterns: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves `relative` (a path in the context) out: the last pattern that
    matches it or one of its parent folders decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for regex, exception in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            verdict = not exception
    return verdict


@dataclass
class Stage:
    """One FROM stage: its file system folder, its Python (the venv) and its state."""

    name: str
    root: Path
    python_prefix: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # The earlier stage whose folder this one shares (FROM <stage>), if any.
    base_stage: str = ""

    def host_path(self, container_path: str) -> Path:
        """Where a path of the stage's file system lives on the host."""
        absolute = (
            container_path
            if container_path.startswith("/")
            else self.workdir.rstrip("/") + "/" + container_path
        )
        if absolute == "/usr/local" or absolute.startswith("/usr/local/"):
            return self.python_prefix / absolute.removeprefix("/usr/local").lstrip("/")
        return self.root / absolute.lstrip("/")

    def map_command(self, command: str) -> str:
        """The command with the stage's absolute paths (its top-level folders, /usr/local)
        pointing into its folder."""
        tops = sorted({p.name for p in self.root.iterdir()} | {"usr/local"}, key=len, reverse=True)
        alternatives = "|".join(re.escape(t) for t in tops)
        return re.sub(
            rf"(?<![\w./-])/({alternatives})(?=[/\s\"';)]|$)",
            lambda m: str(self.host_path("/" + m.group(1))),
            command,
        )


class RecipeRunner:
    """Carries out `dockerfile_path` for `build_args`, with `context` as the build context and
    `scratch` for the stages' file systems."""

    def __init__(
        self, dockerfile_path: Path, context: Path, scratch: Path, build_args: dict[str, str]
    ) -> None:
        self.commands = dockerfile.parse_file(str(dockerfile_path))
        self.context = context
        self.scratch = scratch
        self.build_args = build_args
        self.ignore = dockerignore_patterns(context)
        self.stages: dict[str, Stage] = {}

    def run(self, built: dict[str, Stage] | None = None) -> Stage:
        """Runs every stage; returns the last (the image). A named stage found in `built` (a
        runner's `stages` for other build args) is taken as it is, as Docker's cache would,
        when none of its instructions reads a build argument."""
        global_args = self._resolve_bases()
        stage: Stage | None = None
        reused = False
        for command in self.commands:
            if command.cmd == "ARG" and stage is None:
                continue  # read by _resolve_bases
            elif command.cmd == "FROM":
                name = self._stage_name(command)
                base = expand(command.value[0], global_args).lower()
                reused = built is not None and name in built
                if reused and built is not None:
                    stage = self.stages[name] = built[name]
                elif base in self.stages:
                    stage = self.stages[name] = self._derive(self.stages[base], name)
                else:
                    stage = self._from(command, global_args)
            elif stage is None:
                raise RecipeError(f"line {command.start_line}: {command.cmd} before FROM")
            elif reused:
                if command.cmd == "ARG":
                    raise RecipeError(f"line {command.start_line}: stage {stage.name} reads ARGs")
            else:
                self._step(stage, command, global_args)
        if stage is None:
            raise RecipeError("the Dockerfile has no FROM")
        return stage

    def _resolve_bases(self) -> dict[str, str]:
        """The global ARGs (those before the first FROM), after checking that every FROM
        names an earlier stage or an emulated image."""
        global_args: dict[str, str] = {}
        names: set[str] = set()
        for command in self.commands:
            if command.cmd == "ARG" and not names:
                global_args.update(self._arg(command.value[0], global_args))
            elif command.cmd == "FROM":
                base = expand(command.value[0], global_args).lower()
                if base not in names and not EMULATED_BASE.match(base):
                    raise RecipeError(
                        f"line {command.start_line}: FROM {base}: not a stage of the recipe, "
                        "and not an image this runner emulates (python:*)"
                    )
                names.add(self._stage_name(command).lower())
        return global_args

    def _arg(self, declaration: str, known: dict[str, str]) -> dict[str, str]:
        name, _, default = declaration.partition("=")
        value = self.build_args.get(name, known.get(name, default))
        return {name: value}

    def _stage_name(self, command: dockerfile.Command) -> str:
        values = list(command.value)
        return (
            values[2] if len(values) >= 3 and values[1].upper() == "AS" else str(len(self.stages))
        )

    def _from(self, command: dockerfile.Command, global_args: dict[str, str]) -> Stage:
        name = self._stage_name(command)
        root = self.scratch / f"stage-{name}-{len(self.stages)}"
        root.mkdir(parents=True)
        prefix = root / "usr-local"
        venv.EnvBuilder(with_pip=True, symlinks=True).create(prefix)
        stage = Stage(name=name, root=root, python_prefix=prefix)
        stage.env = {**global_args}
        self.stages[name] = stage
        return stage

    def _derive(self, base: Stage, name: str) -> Stage:
        """A stage FROM an earlier one: its files (shared) and its settings (copied)."""
        return Stage(
            name=name,
            root=base.root,
            python_prefix=base.python_prefix,
            workdir=base.workdir,
            env=dict(base.env),
            user=base.user,
            entrypoint=list(base.entrypoint),
            exposed=list(base.exposed),
            skipped=list(base.skipped),
            base_stage=base.name,
        )

    def _step(self, stage: Stage, command: dockerfile.Command, global_args: dict[str, str]) -> None:
        if stage.base_stage and command.cmd in ("COPY", "RUN", "WORKDIR"):
            raise RecipeError(
                f"line {command.start_line}: {command.cmd} in stage {stage.name}, which shares "
                f"stage {stage.base_stage}'s files here: only settings can be added to it"
            )
        if command.cmd == "ARG":
            name = command.value[0].partition("=")[0]
            stage.env.update(self._arg(command.value[0], {name: global_args.get(name, "")}))
        elif command.cmd == "ENV":
            values = list(command.value)
            stage.env.update(zip(values[0::2], values[1::2], strict=True))
        elif command.cmd == "WORKDIR":
            stage.workdir = command.value[0]
            stage.host_path(stage.workdir).mkdir(parents=True, exist_ok=True)
        elif command.cmd == "COPY":
            self._copy(stage, command)
        elif command.cmd == "RUN":
            self._run(stage, command)
        elif command.cmd == "USER":
            stage.user = command.value[0]
        elif command.cmd == "ENTRYPOINT":
            if not command.json:
                raise RecipeError(f"line {command.start_line}: ENTRYPOINT must be in exec form")
            stage.entrypoint = list(command.value)
        elif command.cmd == "EXPOSE":
            stage.exposed += [expand(port, stage.env) for port in command.value]
        elif command.cmd in ("LABEL", "CMD"):
            pass
        else:
            raise RecipeError(f"line {command.start_line}: {command.cmd} is not supported here")

    def _copy(self, stage: Stage, command: dockerfile.Command) -> None:
        flags = dict(flag.removeprefix("--").split("=", 1) for flag in command.flags)
        *sources, destination = command.value
        target = stage.host_path(destination)
        if "from" in flags:
            origin = self.stages[flags["from"]]
            for source in sources:
                shutil.copytree(origin.host_path(source), target, symlinks=True)
            return
        many = destination.endswith("/") or len(sources) > 1
        for source in sources:
            relative = os.path.normpath(source)
            origin_path = self.context / relative
            if not origin_path.exists() or ignored(relative, self.ignore):
                raise RecipeError(f"line {command.start_line}: COPY {source}: not in the context")
            if origin_path.is_dir():
                self._copy_tree(relative, target)
            else:
                dest = target / origin_path.name if many or target.is_dir() else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin_path, dest)

    def _copy_tree(self, relative: str, target: Path) -> None:
        for directory, subdirs, files in os.walk(self.context / relative):
            inside = os.path.relpath(directory, self.context)
            subdirs[:] = [d for d in subdirs if not ignored(f"{inside}/{d}", self.ignore)]
            for name in files:
                path = f"{inside}/{name}"
                if ignored(path, self.ignore):
                    continue
                dest = target / os.path.relpath(path, relative)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.context / path, dest)

    def _run(self, stage: Stage, command: dockerfile.Command) -> None:
        script = command.value[0] if not command.json else shlex.join(command.value)
        if script.lstrip().startswith("useradd"):
            stage.skipped.append(script)
            return
        script = stage.map_command(script.replace(" --no-cache-dir", ""))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=stage.host_path(stage.workdir),
            env=self.environment(stage),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RecipeError(
                f"line {command.start_line}: RUN failed ({result.returncode}):\n{script}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def environment(self, stage: Stage) -> dict[str, str]:
        """The stage's environment: its ARGs and ENVs over this machine's, its Python first on
        PATH. pip keeps this machine's way to the package index (what a build reaches), but
        neither its configuration files nor local wheel folders, which an image has not."""
        dropped = ("PIP_FIND_LINKS", "VIRTUAL_ENV", "PYTHONPATH", "PIP_CONSTRAINT")
        base = {k: v for k, v in os.environ.items() if k not in dropped}
        base["PIP_CONFIG_FILE"] = os.devnull
        bin_dir = stage.python_prefix / "bin"
        return {**base, **stage.env, "PATH": f"{bin_dir}:{base.get('PATH', '')}"}


def entrypoint_command(stage: Stage) -> list[str]:
    """The image's ENTRYPOINT as a host command line."""
    if not stage.entrypoint:
        raise RecipeError("the image has no ENTRYPOINT")
    program, *arguments = stage.entrypoint
    found = shutil.which(program, path=str(stage.python_prefix / "bin"))
    if found is None:
        raise RecipeError(f"ENTRYPOINT {program!r} is not installed in the image")
    return [found, *arguments]


def describe(stage: Stage) -> str:
    """A summary for assertion messages."""
    return json.dumps(
        {
            "entrypoint": stage.entrypoint,
            "exposed": stage.exposed,
            "user": stage.user,
            "skipped": stage.skipped,
            "python": sys.version.split()[0],
        },
        indent=1,
    )
