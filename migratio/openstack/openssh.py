"""The OpenSSH client (`ssh`) to a head node, as rsync's -e and the stream run it: its argv and
its refusals. The address, host keys and remote failures are migratio.openstack.ssh's."""

from migratio.conf.sites import OpenStackOptions
from migratio.errors import AuthError, HostKeyError, StepError
from migratio.openstack.ssh import address

# Preferred first, OpenSSH's defaults kept after them ("^" = prepend to the default list).
FAST_CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def openssh_command(site: OpenStackOptions) -> list[str]:
    """ssh with the site's key, strict host keys and a fast cipher, up to the destination."""
    argv = ["ssh", "-p", str(site.port)]
    if site.key_file:
        argv += ["-i", str(site.key_file), "-o", "IdentitiesOnly=yes"]
    return argv + [
        "-o", f"UserKnownHostsFile={site.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={site.connect_timeout}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", f"Ciphers={site.ssh_cipher or FAST_CIPHERS}",
        "-o", "Compression=no",
    ]


def ssh_argv(site: OpenStackOptions, line: str) -> list[str]:
    """OpenSSH running the shell `line` on the head node (`--`: the destination is never an option)."""
    return [*openssh_command(site), "--", f"{site.user}@{site.host}", line]


def openssh_refusal(stderr_tail: str, site: OpenStackOptions) -> StepError | None:
    """OpenSSH's refusal to connect (host key, authentication) as the error to report, else None."""
    where = address(site.host, site.port)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr_tail:
        return HostKeyError(f"host key of {where} does not match known_hosts file {site.known_hosts} "
                            "(rsync/ssh refused to connect)")
    if "Host key verification failed" in stderr_tail:
        return HostKeyError(f"host key of {where} is not in (or does not match) known_hosts file "
                            f"{site.known_hosts} (rsync/ssh refused to connect)")
    if "Permission denied (publickey" in stderr_tail:
        return AuthError(f"ssh {site.user}@{where}: authentication failed with key {site.key_file}")
    return None
