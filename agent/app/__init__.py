"""The application: the command line, wiring the agent from its config, reloading it."""
