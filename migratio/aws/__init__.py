"""Amazon clients: boto3 sessions, AMIs, EBS direct snapshots, VM Import."""
