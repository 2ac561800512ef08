"""Shell sessions in-process (no HTTP): persistence, parsing edge cases, timeouts, input, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from agentbox.errors import BadRequestError, ConflictError, NotFoundError
from agentbox.protocol import ReadOutput, RunCommand, SendInput, SendKeys, SessionCreate


def run(cmd: str, **kw: float) -> RunCommand:
    return RunCommand(command=cmd, **kw)


def test_state_persists_between_commands(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            (tmp_path / "work" / "sub").mkdir()
            await sh.run(run("cd sub && export GREETING=hello && alias hi='echo alias-$GREETING'"))
            await sh.run(run('shout() { echo "${1^^}"; }'))
            res = await sh.run(run("pwd; echo $GREETING; hi; shout quiet"))
            assert res.output.splitlines() == [str(tmp_path / "work" / "sub"), "hello", "alias-hello", "QUIET"]
            assert res.cwd == str(tmp_path / "work" / "sub")
            assert res.exit_code == 0

    aio(main())


def test_venv_activation_persists(aio, make_shells, tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    # A minimal stand-in for a venv's activate script: what matters is that it changes the shell's state.
    (venv / "activate").write_text(f'export VIRTUAL_ENV="{venv.parent}"\nexport PATH="{venv}:$PATH"\n')
    (venv / "python").write_text("#!/bin/sh\necho venv-python\n")
    (venv / "python").chmod(0o755)

    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            await sh.run(run(f"source {venv}/activate"))
            res = await sh.run(run("echo $VIRTUAL_ENV; python"))
            assert res.output.splitlines() == [str(venv.parent), "venv-python"]

    aio(main())


def test_exit_codes_and_syntax_errors(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            assert (await sh.run(run("true"))).exit_code == 0
            assert (await sh.run(run("false"))).exit_code == 1
            assert (await sh.run(run("(exit 42)"))).exit_code == 42
            bad = await sh.run(run("if then fi ("))
            assert bad.exit_code == 2 and "syntax error" in bad.output
            assert (await sh.run(run("echo still-alive"))).output == "still-alive\n"

    aio(main())


def test_multiline_heredoc_quotes_and_find_exec(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            script = "X=1\ncat <<'EOF'\nliteral $X \"q\" 'q'\nEOF\ncat <<EOF\nexpanded $X\nEOF\necho done"
            res = await sh.run(run(script))
            assert res.output == "literal $X \"q\" 'q'\nexpanded 1\ndone\n"
            res = await sh.run(run("""echo "a b" 'c "d"' $'e\\tf' "it's" 'wow!'"""))
            assert res.output == 'a b c "d" e\tf it\'s wow!\n'
            for name in ("a.txt", "b.txt"):
                (tmp_path / "work" / name).write_text(name)
            res = await sh.run(run("find . -name '*.txt' -exec cat {} \\; | sort"))
            assert res.output == "a.txtb.txt\n" or sorted(res.output) == sorted("a.txtb.txt\n")

    aio(main())


def test_unicode_and_binary_output(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await sh.run(run("echo 'héllo wörld ✓ 日本'; printf '\\xff\\xfe\\x00raw\\n'"))
            assert res.output.startswith("héllo wörld ✓ 日本\n")
            assert "\ufffd" in res.output and res.output.endswith("raw\n")
            # Output that looks like the start of the prompt marker must come through untouched.
            res = await sh.run(run("printf '\\x1e\\x1e:not-a-prompt\\n'"))
            assert res.output == "\x1e\x1e:not-a-prompt\n"

    aio(main())


def test_background_job_returns_at_once(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await asyncio.wait_for(sh.run(run("sleep 30 & echo started")), 10)
            assert res.exit_code == 0 and "started" in res.output and not res.still_running
            assert (await sh.run(run("jobs | wc -l"))).output.strip() == "1"

    aio(main())


def test_a_runaway_job_left_by_a_command_is_killed_and_other_jobs_live(
    aio, make_shells, tmp_path: Path, session_pids, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fork bomb returns at once and grows in the background; here a job that forks 20 sleeps stands in
    # for it, with the runaway size lowered to 8 processes (a real bomb is left to the docker tests).
    monkeypatch.setattr("agentbox.server.shell._runaway_size", lambda: 8)

    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await sh.run(run("(for i in $(seq 20); do sleep 60 & done; wait) & sleep 60 & echo started"))
            assert res.exit_code == 0 and "started" in res.output
            bash = sh.info().pid
            for _ in range(600):  # bounded wait for the watch (its first look comes within 50 ms)
                if len(session_pids(bash)) <= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(session_pids(bash)) == 2, session_pids(bash)  # bash and the one-process job
            jobs = (await sh.run(run("jobs -r | wc -l"))).output.splitlines()
            assert jobs[0] == "1" and "Killed" in jobs[1], jobs  # bash's own job report says what happened

    aio(main())


def test_a_command_cut_off_by_server_shutdown_says_so(aio, make_shells, tmp_path: Path) -> None:
    # At SIGTERM uvicorn cancels the requests still running once its grace ends: that was a bare 500.
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            task = asyncio.ensure_future(sh.run(run("sleep 60")))
            for _ in range(200):  # bounded wait until the command runs
                if sh.busy:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(ConflictError, match="server is stopping"):
                await task

    aio(main())


def test_exit_restarts_session_and_kills_its_processes(aio, make_shells, tmp_path: Path, session_pids) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            old_pid = sh.info().pid
            await sh.run(run("cd / && export GONE=1 && sleep 60 &"))
            res = await sh.run(run("exit 7"))
            assert res.session_restarted and res.exit_code == 7
            assert res.cwd == str(tmp_path / "work")
            assert session_pids(old_pid) == []  # the background sleep went with its shell
            with pytest.raises(ChildProcessError):
                os.waitpid(old_pid, os.WNOHANG)  # already reaped: no zombie left
            res = await sh.run(run("echo ${GONE:-fresh}; pwd"))
            assert res.output.splitlines() == ["fresh", str(tmp_path / "work")]
            assert sh.info().pid != old_pid

    aio(main())


def test_hard_timeout_interrupts_and_session_survives(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await sh.run(run("echo before; sleep 30; echo after", timeout=0.5))
            assert res.timed_out and not res.still_running
            assert "before" in res.output and "after" not in res.output
            assert res.exit_code == 130
            # A job that ignores SIGINT is SIGKILLed after the grace period.
            res = await sh.run(run("bash -c \"trap '' INT; sleep 30\"", timeout=0.3))
            assert res.timed_out and not res.still_running
            # A pure-bash busy loop runs in bash itself: SIGINT to bash returns it to the prompt.
            res = await sh.run(run("while true; do :; done", timeout=0.3))
            assert res.timed_out and not res.session_restarted
            assert (await sh.run(run("echo ok"))).output == "ok\n"
            # When bash itself ignores SIGINT and loops, only a new shell helps; the result says so.
            res = await sh.run(run("trap '' INT; while true; do :; done", timeout=0.3))
            assert res.timed_out and res.session_restarted
            assert (await sh.run(run("echo ok"))).output == "ok\n"

    aio(main())


def test_no_output_timeout_returns_control_and_read_more(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await sh.run(run("echo first; sleep 0.6; echo second", no_output_timeout=0.2))
            assert res.still_running and res.exit_code is None and res.output == "first\n"
            with pytest.raises(ConflictError, match="still running"):
                await sh.run(run("echo other"))
            more = await sh.read_output(ReadOutput(timeout=10, no_output_timeout=5))
            assert more.command_id == res.command_id
            assert more.output == "second\n" and more.exit_code == 0 and not more.still_running

    aio(main())


def test_interactive_input_and_keys(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            res = await sh.run(run("read -p 'name? ' NAME; echo hello $NAME", no_output_timeout=0.2))
            assert res.still_running and "name?" in res.output
            res = await sh.send_input(SendInput(text="agent\n", timeout=5, no_output_timeout=2))
            assert res.output.strip() == "hello agent" and res.exit_code == 0
            # Ctrl-C through the terminal stops a foreground program.
            await sh.run(run("sleep 30", no_output_timeout=0.1))
            res = await sh.send_keys(SendKeys(keys=["C-c"], timeout=5, no_output_timeout=2))
            assert not res.still_running and res.exit_code == 130
            # Ctrl-D ends input to a program reading the terminal.
            await sh.run(run("cat > got.txt", no_output_timeout=0.1))
            await sh.send_input(SendInput(text="line\n", timeout=0.1, no_output_timeout=0.1))
            res = await sh.send_keys(SendKeys(keys=["C-d"], timeout=5, no_output_timeout=2))
            assert res.exit_code == 0
            assert (tmp_path / "work" / "got.txt").read_text() == "line\n"
            with pytest.raises(ConflictError, match="no command is running"):
                await sh.send_input(SendInput(text="x"))

    aio(main())


def test_interrupt_when_idle_does_not_confuse_next_command(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            await sh.run(run("true"))
            sh._signal_foreground(2)  # a stray SIGINT at the prompt prints an extra prompt
            res = await sh.run(run("sleep 0.2; echo late"))
            # Had the stale prompt ended the command, "late" would be missing (and the next run busy).
            assert res.output.strip() == "late" and res.exit_code == 0

    aio(main())


def test_truncation_keeps_head_and_tail_and_full_output(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path, max_output_chars=1000) as m:
            sh = m.get("default")
            res = await sh.run(run("seq 1 100000"))
            assert res.truncated and len(res.output) <= 1000
            assert res.output.startswith("1\n2\n3\n") and res.output.endswith("99999\n100000\n")
            assert "characters cut" in res.output and res.output_chars == len("\n".join(map(str, range(1, 100001)))) + 1
            full = b"".join(m.command(res.command_id).spool.chunks())
            assert full.decode().splitlines() == [str(i) for i in range(1, 100001)]

    aio(main())


def test_sessions_are_independent_and_closing_kills_processes(aio, make_shells, tmp_path: Path, session_pids) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            m.create(SessionCreate(name="other", env={"ONLY_HERE": "yes"}))
            other = m.get("other")
            res = await other.run(run("echo $ONLY_HERE; for i in 1 2 3; do sleep 60 & done"))
            assert res.output.startswith("yes")
            pid = other.info().pid
            assert len(session_pids(pid)) >= 4
            assert (await m.get("default").run(run("echo ${ONLY_HERE:-unset}"))).output == "unset\n"
            # A busy session does not block another one.
            await other.run(run("sleep 30", no_output_timeout=0.1))
            assert (await m.get("default").run(run("echo free"))).output == "free\n"
            m.close("other")
            assert session_pids(pid) == []
            with pytest.raises(NotFoundError):
                m.get("other")
            with pytest.raises(ConflictError):
                m.create(SessionCreate(name="default"))
            with pytest.raises(BadRequestError):
                m.close("default")

    aio(main())


def test_stream_yields_output_before_the_end(aio, make_shells, tmp_path: Path) -> None:
    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            events = await sh.stream(run("echo one; sleep 0.3; echo two"))
            first = await events.__anext__()
            assert first.type == "output" and first.text == "one\n"
            rest = [e async for e in events]
            assert rest[-1].type == "result" and rest[-1].result.exit_code == 0
            assert "".join(e.text for e in rest if e.type == "output") == "two\n"

    aio(main())


def test_commands_are_interruptible_even_when_the_server_ignores_sigint(aio, make_shells, tmp_path: Path) -> None:
    # A server started as a background job of a non-interactive shell (or under nohup) has SIGINT ignored;
    # a disposition ignored at exec stays ignored in bash and everything it runs unless the server resets it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        async def main() -> None:
            async with make_shells(tmp_path) as m:
                sh = m.get("default")
                ignored = int((await sh.run(run("grep SigIgn /proc/self/status"))).output.split()[-1], 16)
                assert ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGQUIT - 1)) == 0, hex(ignored)
                res = await sh.run(run("echo before; sleep 30; echo after", timeout=0.5))
                assert res.timed_out and res.exit_code == 130 and "after" not in res.output, res

        aio(main())
    finally:
        signal.signal(signal.SIGINT, previous)
