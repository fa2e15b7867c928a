"""OpenStack clients. The destination Glance is one protocol (glance_protocol.Glance) with three
implementations, picked by destination.open_destination: the API (glance.ApiGlance), migratio's
client on the head node (headnode.HeadNodeGlance; headnode_client.py is what runs there) and
the head node's glance CLI (glance_cli.CliGlance). SSH to the head node: ssh (address, paramiko
shell, host keys, remote failures) and openssh (the `ssh` argv of rsync and the stream, and a job's
one ControlMaster that its commands, stream and rsync share: openssh.MasterShell); rsync;
the stream into the destination Glance; the source Glance (glance.GlanceClient); Nova; Keystone
auth."""
