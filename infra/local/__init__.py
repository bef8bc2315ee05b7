"""A multi-node Ray cluster rehearsed on one machine, on loopback only (see ``infra/README.md``)."""
