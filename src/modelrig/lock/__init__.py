"""Reproducible rebuilds: a lock of a provisioned model (`schema`, `collect`), comparing a host with it
(`verify`), rebuilding it exactly (`rebuild`) and carrying everything it needs to an offline host (`bundle`)."""
