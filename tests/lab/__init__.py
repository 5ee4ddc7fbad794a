"""A VPC lab (network namespaces, OpenVPN, sshd, Apache) for deployer's tests."""
