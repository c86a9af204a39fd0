"""The status page: server-rendered HTML, no scripts, no build step."""
