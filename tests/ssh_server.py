"""A real SSH server on 127.0.0.1 for the SSHCluster test: asyncssh's server, running each command with /bin/sh.

usage: python tests/ssh_server.py PORT

It lets any user in without authentication (it listens on 127.0.0.1 only, for
the length of a test session). Commands run in this server's process group,
so stopping the group (the conftest ``Service``) stops whatever they started;
a command whose channel closes (SSHCluster closing) is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import asyncssh

GRACE = 10.0


class OpenServer(asyncssh.SSHServer):
    """No authentication: the test connects as any user."""

    def begin_auth(self, username: str) -> bool:
        return False


async def run_command(process: asyncssh.SSHServerProcess) -> None:
    """Run the session's command, its standard streams over the channel, until it exits or the channel closes."""
    child = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"exec {process.command or 'true'}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr)
    exited = asyncio.ensure_future(child.wait())
    closed = asyncio.ensure_future(process.wait_closed())
    await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
    if child.returncode is None:
        child.terminate()
        try:
            await asyncio.wait_for(exited, GRACE)
        except TimeoutError:
            child.kill()
            await exited
    closed.cancel()
    with contextlib.suppress(OSError, asyncssh.Error):
        process.exit(child.returncode or 0)


async def serve(port: int) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(OpenServer, "127.0.0.1", port, server_host_keys=[key],
                                          process_factory=run_command, encoding=None)
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
