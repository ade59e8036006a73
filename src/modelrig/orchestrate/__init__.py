"""The whole pipeline on one host: `up` (plan, env, fetch, convert, render, launch), `down`, their `--check`, and
the offline demo."""
