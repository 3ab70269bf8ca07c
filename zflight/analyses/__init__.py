"""The paper's analyses as tools: figures, numbers and CLI subcommands built on zflight.attribution."""
