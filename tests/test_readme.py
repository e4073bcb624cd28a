"""README's worked session, replayed as written.

The `$ ` lines of the shell blocks under "## A worked session" are run, in
order, by one `bash` (`set -euo pipefail`), from a temporary directory that
stands for a checkout: `scripts/` and `.venv` are links to this one, and
`DEMO_DIR` makes `scripts/demo` build, serve and mount its store there
(`demo-store/`, `demo-mnt/`) on a free port.  Nothing is substituted: the
commands run are the README's own lines, `scripts/demo` included.

What the README shows after a command is checked like a doctest: an error
line `prog: …` means the command must fail with that message on stderr; any
other output must be what it printed, where `…` stands for anything (a
timestamp, machine-specific bytes) and `4f0c2e1a…` for any UUID.  The demo is always stopped and the
mount always lazily unmounted at the end, whatever failed.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mounting import is_mounted

pytestmark = pytest.mark.mount

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass
class Step:
    cmd: str
    output: list[str] = field(default_factory=list)

    @property
    def fails(self) -> bool:
        """README shows the command's own error message (`cp: …`): it must fail."""
        prog = self.cmd.split()[0]
        return bool(self.output) and self.output[0].startswith(prog + ": ")


def session_blocks(text: str) -> list[str]:
    section = text.split("\n## A worked session\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def session_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    for block in session_blocks(text):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append(Step(line[2:]))
            elif line.strip() and not line.startswith("#"):
                assert steps, f"output before any command in the README session: {line!r}"
                steps[-1].output.append(line)
    return steps


def _pattern(text: str) -> re.Pattern:
    """`4f0c2e1a…` (an example UUID) matches any hex word, any other `…` anything."""
    parts = re.split(r"([0-9a-f]+…|…)", " ".join(text.split()))
    return re.compile("".join("[0-9a-f]+" if p.endswith("…") and len(p) > 1 else ".*" if p == "…"
                              else re.escape(p) for p in parts))


def _matches(st: Step, got: list[str]) -> bool:
    """README's output of `st` against what it printed: an `ls` shown in columns
    word by word (any order: UUIDs sort anywhere), else line by line in order."""
    if st.cmd.split()[0] == "ls" and "-l" not in st.cmd.split():
        want, have = " ".join(st.output).split(), " ".join(got).split()
        if len(want) != len(have):
            return False
        for w in sorted(want, key=lambda t: "…" in t):   # literal words first
            hit = next((h for h in have if _pattern(w).fullmatch(h)), None)
            if hit is None:
                return False
            have.remove(hit)
        return True
    rest = iter(" ".join(g.split()) for g in got)
    return all(any(_pattern(line).fullmatch(g) for g in rest) for line in st.output)


def _script(steps: list[Step], out: Path, prologue: str = "") -> str:
    lines = ["set -euo pipefail", prologue]
    for i, st in enumerate(steps):
        redirect = f'>"{out}/{i}.out" 2>"{out}/{i}.err"'
        lines.append(f'echo {i} >"{out}/step"')
        if st.fails:
            lines.append(f"if {{ {st.cmd}\n}} {redirect}; then exit 99; fi")
        else:
            lines.append(f"{{ {st.cmd}\n}} {redirect}")
    lines.append(f'echo done >"{out}/step"')
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_session_parses():
    steps = session_steps(README.read_text())
    cmds = [s.cmd for s in steps]
    assert cmds[0].startswith("scripts/demo") and any(c.startswith("source .venv/bin/activate") for c in cmds)
    assert any(s.fails for s in steps) and len(steps) > 20


@contextmanager
def demo_checkout(tmp_path):
    """A directory standing for the checkout (`scripts/` and `.venv` linked to
    this one; `DEMO_DIR` puts `demo-store/` and `demo-mnt/` in it), the
    environment of a fresh shell there (dvidfs not on PATH) and the demo's
    port.  The demo is always stopped and its mount lazily unmounted."""
    home = tmp_path / "checkout"
    home.mkdir()
    for name in ("scripts", ".venv"):
        (home / name).symlink_to(ROOT / name)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVIDFS_", "VIRTUAL_ENV"))}
    env.update(DEMO_DIR=str(home), DEMO_PORT=str(port), TMPDIR=str(tmp_path), HOME=str(tmp_path))
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(str(ROOT / ".venv")))
    mnt = home / "demo-mnt"
    try:
        yield home, env, port
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "demo"), "stop"], env=env,
                       capture_output=True, timeout=120)
        pidfile = home / "demo-store" / "serve.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        assert not is_mounted(mnt)


def run_steps(steps: list[Step], home: Path, env: dict, out: Path, prologue: str = "") -> None:
    """Run `steps` in one bash from `home`; fail naming the first step that did
    not do what README says, then compare what README shows with what ran."""
    out.mkdir()
    (out / "session.sh").write_text(_script(steps, out, prologue))
    r = subprocess.run(["bash", str(out / "session.sh")], cwd=home, env=env,
                       capture_output=True, text=True, timeout=600)
    last = (out / "step").read_text().strip() if (out / "step").exists() else "none"
    if last != "done":
        if not last.isdigit():
            pytest.fail(f"the session did not start: {r.stderr[-1500:]}")
        i = int(last)
        err = (out / f"{i}.err").read_text() if (out / f"{i}.err").exists() else ""
        o = (out / f"{i}.out").read_text() if (out / f"{i}.out").exists() else ""
        how = "did not fail as README shows" if r.returncode == 99 else f"failed (exit {r.returncode})"
        pytest.fail(f"README step {i} {how}: $ {steps[i].cmd}\nstdout: {o[-1500:]}\nstderr: {err[-1500:]}"
                    f"\nbash: {r.stderr[-500:]}")
    assert r.returncode == 0, r.stderr
    for i, st in enumerate(steps):
        if not st.output:
            continue
        got = (out / f"{i}.{'err' if st.fails else 'out'}").read_text().splitlines()
        assert _matches(st, got), f"README step {i}: $ {st.cmd}\nREADME shows: {st.output}\nprinted: {got[:20]}"


def test_readme_worked_session_runs_as_written(tmp_path):
    """Twice: once on the demo's first store, once after `scripts/demo reset`
    (which README names for replaying it)."""
    steps = session_steps(README.read_text())
    with demo_checkout(tmp_path) as (home, env, _):
        run_steps(steps, home, env, tmp_path / "out")
        r = subprocess.run(["scripts/demo", "reset"], cwd=home, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-1000:]
        run_steps(steps, home, env, tmp_path / "replay")


def test_readme_http_examples_run(tmp_path):
    """The HTTP section's commands against the demo it describes; the one
    substitution is the demo's port (a free one, not 8000)."""
    section = README.read_text().split("\n## DVID's HTTP API", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    steps = session_steps("\n## A worked session\n```sh\n" + block + "```\n")
    assert len(steps) >= 4
    with demo_checkout(tmp_path) as (home, env, port):
        for st in steps:
            st.cmd = re.sub(r"(localhost|127\.0\.0\.1):8000", rf"\1:{port}", st.cmd)
            shown = re.search(r"#\s*(\[.*\])\s*$", st.cmd)   # `… # [146197322700]`: what it prints
            if shown:
                st.output = [shown.group(1)]
        run_steps(steps, home, env, tmp_path / "out", prologue="scripts/demo >/dev/null")
        assert (home / "z64.png").read_bytes().startswith(b"\x89PNG")
        sizes = (tmp_path / "out" / f"{len(steps) - 1}.out").read_text()
        assert re.fullmatch(r"\[?\d+\]?\s*", sizes), sizes
