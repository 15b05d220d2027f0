"""The command line's parts beside cli.py (its commands): the option declarations (options.py), the step from
flags to the commands' typed configs (config.py), and running the app (app.py). Nothing under vqgen.stages
imports typer: the library takes typed configs, and only the command line knows flags."""
