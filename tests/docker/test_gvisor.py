"""gVisor (runtime="runsc") sandboxes doing what agents do first, as the sandbox user, in both modes.

Debian's runsc 0.0~20221219 rejects statx(AT_NO_AUTOMOUNT), which coreutils passes on every call, blocks
forever on an empty write to a terminal (npm's last write), and never honours setuid (no_new_privs on
every task): the runtime image's shim and the sudo broker (images/files/gvisor-compat.c, agentbox-sudo)
are what make these pass. Skipped only when runsc is not
registered with the engine (`agentbox doctor --fix --runsc`, which `make test`'s setup runs).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbox.backends.spec import server_command
from agentbox.config import SandboxConfig
from agentbox.sandbox import SandboxState

pytestmark = pytest.mark.docker

UID = 1000
ME = os.getuid()


@pytest.fixture()
def gvisor(docker_client: Any, sandboxes: Callable[..., Any]) -> Callable[..., Any]:
    """Factory of started runsc sandboxes (as ``sandboxes``); skips when runsc is not registered."""
    if "runsc" not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("runsc (gVisor) is not registered with dockerd: run `agentbox doctor --fix --runsc`")

    def make(**settings: Any) -> Any:
        return sandboxes(runtime="runsc", **settings)

    return make


def test_only_default_mode_under_runsc_asks_the_entrypoint_for_the_sudo_broker() -> None:
    def command(**settings: Any) -> tuple[str, ...]:
        return server_command(SandboxConfig(**settings), host="0.0.0.0", port=1)

    assert "--no-setuid" in command(runtime="runsc")
    assert "--no-setuid" not in command(runtime="runsc", hardened=True)
    assert "--hardened" in command(runtime="runsc", hardened=True)
    assert "--no-setuid" not in command()  # runc honours setuid: the real sudo


# A wheel made by hand (no setuptools or network needed): what `pip install ./x.whl` sees from a build.
MAKE_WHEEL = r"""
import base64, hashlib, zipfile
files = {
    "abxgv/__init__.py": b"VALUE = 'from the wheel'\n",
    "abxgv-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: abxgv\nVersion: 1.0\n",
    "abxgv-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items())
record += "abxgv-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile("/tmp/abxgv-1.0-py3-none-any.whl", "w") as whl:
    for name, data in files.items():
        whl.writestr(name, data)
    whl.writestr("abxgv-1.0.dist-info/RECORD", record)
"""

# Each step as an agent would type it, one by one, so a failure names the tool.
TOOLS = (
    ("ls", "ls -la / /workspace >/dev/null && ls -l /etc/hostname"),
    ("stat", "stat /etc/hostname /usr >/dev/null && stat -c %u /workspace"),
    ("du", "du -sh /usr/lib/python3 >/dev/null"),
    ("df", "df -h / /workspace >/dev/null"),
    ("cp", "echo data > /tmp/a && cp -a /tmp/a /tmp/b && cp -r /etc/apt /tmp/apt && cmp /tmp/a /tmp/b"),
    ("mv", "mkdir -p /tmp/d1 && mv /tmp/b /tmp/d1/ && mv /tmp/d1 /tmp/d2 && test -f /tmp/d2/b"),
    ("find", "find /etc -maxdepth 2 -name '*.conf' -newer /etc/hostname -o -type f -print >/dev/null 2>&1; "
             "find /tmp/d2 -type f | grep -q b"),
    ("tar", "mkdir -p /tmp/x && tar -C /tmp/d2 -czf /tmp/t.tgz . && tar -C /tmp/x -xzf /tmp/t.tgz && test -f /tmp/x/b"),
    ("git", "cd /tmp && git init -q repo && cd repo && echo hi > f && git add f && "
            "git -c user.email=a@b -c user.name=a commit -qm one && git status --short && git log --oneline"),
    ("python", "python3 -c 'import os, pathlib; os.listdir(\"/\"); "
               "print(pathlib.Path(\"/etc/hostname\").stat().st_size)'"),
    ("pip install", f"python3 -c {shlex.quote(MAKE_WHEEL)} && "
                    "pip install -q --no-index --user /tmp/abxgv-1.0-py3-none-any.whl "
                    "&& python3 -c 'import abxgv; print(abxgv.VALUE)'"),
    ("node", "node --version"),
    # what npm does last on a terminal: process.stderr.write(''), a zero-length write(2)
    ("empty write", "python3 -c 'import os; assert os.write(1, b\"\") == 0 and os.writev(2, [b\"\"]) == 0'"),
    ("npm", "npm --version"),
)


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_the_everyday_tool_set_works_as_the_sandbox_user(gvisor: Callable[..., Any], hardened: bool) -> None:
    sb = gvisor(user_id=UID, hardened=hardened)
    assert sb.run("id -u").output.strip() == str(UID)
    failed = []
    for name, command in TOOLS:
        r = sb.run(command, timeout=90)
        if r.exit_code != 0:
            failed.append(f"{name}: exit {r.exit_code}: {r.output[-800:]}")
    assert not failed, "\n".join(failed)


def test_npm_works_under_runc(sandboxes: Callable[..., Any]) -> None:
    # The runtime image carries npm (the bootstrapped base does, as nikolaik/python-nodejs does).
    r = sandboxes(user_id=UID).run("npm --version", timeout=120)
    assert r.exit_code == 0 and r.output.strip(), r.output


# The shim answers only what differs under gVisor: under runc every write gives Linux's own answer.
SHIM_UNDER_RUNC = r"""
import errno, os, socket
assert os.write(1, b"") == 0 and os.writev(1, [b"", b""]) == 0
try:
    os.write(987, b"")
except OSError as e:
    assert e.errno == errno.EBADF, e
else:
    raise AssertionError("an empty write to a closed fd succeeded")
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
assert os.write(a.fileno(), b"") == 0 and b.recv(10) == b""  # the empty datagram is still sent
r, w = os.pipe()
assert os.write(w, b"abc") == 3 and os.read(r, 3) == b"abc"
print("ok")
"""


def test_the_gvisor_shim_changes_nothing_under_runc(sandboxes: Callable[..., Any]) -> None:
    sb = sandboxes(user_id=UID)
    assert sb.run("grep -c gvisor-compat /etc/ld.so.preload").output.strip() == "1"
    r = sb.run(f"python3 -c {shlex.quote(SHIM_UNDER_RUNC)}", timeout=60)
    assert r.exit_code == 0 and r.output.strip() == "ok", r.output


def test_default_mode_keeps_sudo_for_package_installs(gvisor: Callable[..., Any]) -> None:
    sb = gvisor(user_id=UID)
    assert sb.run("sudo -n id -u").output.strip() == "0"
    r = sb.run("sudo -n apt-get check -qq && sudo apt-get install -y -qq --no-download --simulate tini", timeout=120)
    assert r.exit_code == 0, r.output[-2000:]
    # root's tree, through sudo and only through it; files keep the owner they are given
    assert sb.run("touch /etc/abx-denied").exit_code != 0
    made = sb.run("echo x | sudo tee /etc/abx-gv >/dev/null && sudo chown 1000 /etc/abx-gv && stat -c %u /etc/abx-gv")
    assert made.exit_code == 0 and made.output.split()[-1] == "1000", made.output
    # sudo's own conventions: environment reset, who called, exit status, an unknown command
    env = sb.run("sudo sh -c 'echo $HOME $USER $SUDO_UID $PATH'").output.split()
    assert env[:3] == ["/root", "root", str(UID)], env
    assert sb.run("sudo sh -c 'exit 7'").exit_code == 7
    missing = sb.run("sudo abx-no-such-command")
    assert missing.exit_code != 0 and "command not found" in missing.output
    assert sb.run("sudo -u nobody id -un").output.strip() == "nobody"
    # another uid than the sandbox user's gets no root from the broker
    other = sb.run("sudo -u nobody sudo -n id -u")
    assert other.exit_code != 0 and other.output.strip() != "0", other.output


def test_hardened_mode_refuses_sudo(gvisor: Callable[..., Any]) -> None:
    sb = gvisor(user_id=UID, hardened=True)
    r = sb.run("sudo -n true; ls -l /usr/local/bin/sudo /run/agentbox-sudo/socket")
    assert r.exit_code != 0
    assert "sudo" in sb.run("command -v sudo").output  # the real one, which cannot elevate
    assert sb.run("sudo -n id -u").output.strip() != "0"


def test_files_made_in_a_bind_mount_belong_to_the_sandbox_user(gvisor: Callable[..., Any], tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    if ME == 0:
        os.chown(workspace, UID, UID)
    local = tmp_path / "up"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "f.txt").write_text("uploaded")
    sb = gvisor(user_id=UID, volumes=[f"{workspace}:/workspace"])
    made = sb.run("mkdir -p bycmd && echo x > bycmd/cmd.txt && ls -l bycmd && stat -c %u bycmd/cmd.txt")
    assert made.exit_code == 0 and made.output.split()[-1] == str(UID), made.output
    sb.write_file("/workspace/written.txt", "written")
    sb.upload(str(local), "/workspace/uploaded")
    for rel in ("bycmd", "bycmd/cmd.txt", "written.txt", "uploaded", "uploaded/sub/f.txt"):
        st = os.stat(workspace / rel)
        assert (st.st_uid, st.st_gid) == (UID, UID), rel


def test_the_runtime_servers_features_work_under_gvisor(gvisor: Callable[..., Any], tmp_path: Path) -> None:
    sb = gvisor(user_id=UID)
    # shell: state kept between commands
    sb.run("cd /tmp && export ABX=kept")
    r = sb.run("pwd; echo $ABX")
    assert r.output.split() == ["/tmp", "kept"], r.output
    # files
    sb.write_file("/tmp/note.txt", "hello gvisor")
    assert sb.read_file("/tmp/note.txt").content == "hello gvisor"
    assert "note.txt" in [entry.name for entry in sb.list_dir("/tmp").entries]
    # upload / download
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A")
    sb.upload(str(src), "/tmp/upl")
    assert sb.run("cat /tmp/upl/a.txt").output.strip() == "A"
    out = sb.download("/tmp/upl/a.txt", str(tmp_path / "back.txt"))
    assert Path(out).read_text() == "A"
    # the Python kernel, stateful
    assert sb.run_python("x = 41").status == "ok"
    result = sb.run_python("print(x + 1)")
    assert result.status == "ok"
    assert "42" in "".join(str(o.model_dump()) for o in result.outputs)


def test_pause_and_resume_under_gvisor(gvisor: Callable[..., Any]) -> None:
    sb = gvisor(user_id=UID)
    sb.run("cd /tmp && export KEPT=yes")
    pid = sb.run("sleep 1000 & echo $!").output.strip().splitlines()[-1]
    sb.pause()
    assert sb.state is SandboxState.PAUSED
    sb.resume()
    assert sb.state is SandboxState.RUNNING
    r = sb.run(f"pwd; echo $KEPT; ps -o comm= -p {pid}")
    assert r.output.split() == ["/tmp", "yes", "sleep"], r.output
    # sudo's broker survives the pause too
    assert sb.run("sudo -n id -u").output.strip() == "0"


def test_doctor_says_what_differs_under_gvisor_before_a_sandbox_starts(gvisor: Callable[..., Any]) -> None:
    from agentbox.doctor import register_runsc

    check = register_runsc(fix=False, progress=lambda _line: None)
    assert check.ok
    assert "sudo" in check.detail and "broker" in check.detail and "shim" in check.detail, check.detail
