"""outreach: an outreach sequence engine for the cold, reminder and network cadences of a
RevOps playbook."""

__version__ = "0.1.0"
