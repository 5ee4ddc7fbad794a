"""deployer: deploy Django apps to Apache hosts behind a VPN, one plan at a time."""

__version__ = "0.1.0"
